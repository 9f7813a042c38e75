// Apollo Client's PersistedQueryLink against Depot's automatic persisted
// queries, as Apollo's docs set it up: the SHA-256 alone first (by GET, so a
// CDN could cache it), the document sent along once Depot answers
// PERSISTED_QUERY_NOT_FOUND, and from then on the hash alone again. A fetch
// wrapper records what went over the wire for the test to judge.
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { SetContextLink } from "@apollo/client/link/context";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";

import { GRAPHQL_URL, PASSWORD, freshEmail, section } from "./common.js";

async function sha256(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** What each request carried: its method, a query or not, a hash or not, and the answer. */
function recordingFetch(sent) {
  return async (input, init = {}) => {
    const url = new URL(typeof input === "string" ? input : input.url);
    const method = (init.method ?? "GET").toUpperCase();
    const payload = method === "GET" ? Object.fromEntries(url.searchParams) : JSON.parse(init.body);
    const extensions = typeof payload.extensions === "string" ? JSON.parse(payload.extensions) : payload.extensions;
    const response = await fetch(input, init);
    const body = await response.clone().json();
    sent.push({
      method,
      query: Boolean(payload.query),
      sha256Hash: extensions?.persistedQuery?.sha256Hash ?? null,
      status: response.status,
      cacheControl: response.headers.get("cache-control"),
      errorCodes: (body.errors ?? []).map((error) => error.extensions?.code),
    });
    return response;
  };
}

export function createPersistedClient(getToken, sent) {
  const auth = new SetContextLink(({ headers }) => {
    const token = getToken();
    return { headers: { ...headers, ...(token && { Authorization: `Bearer ${token}` }) } };
  });
  const persisted = new PersistedQueryLink({ sha256, useGETForHashedQueries: true });
  const http = new HttpLink({ uri: GRAPHQL_URL, fetch: recordingFetch(sent) });
  return new ApolloClient({ link: auth.concat(persisted).concat(http), cache: new InMemoryCache() });
}

const REGISTER = gql`
  mutation PersistedRegister($input: RegisterInput!) {
    register(input: $input) { accessToken }
  }
`;
const ME = gql`
  query PersistedMe {
    me { email displayName }
  }
`;

/** Register (a mutation: POSTed, hash first), then the same query twice: unknown, then known. */
export async function persistedQueriesScenario() {
  const { log } = section("persistedQueries");
  const sent = [];
  let token = null;
  const client = createPersistedClient(() => token, sent);
  const email = freshEmail("persisted");
  const { data } = await client.mutate({
    mutation: REGISTER,
    variables: { input: { email, password: PASSWORD, displayName: "Persisted" } },
  });
  token = data.register.accessToken;
  const first = await client.query({ query: ME, fetchPolicy: "network-only" });
  const second = await client.query({ query: ME, fetchPolicy: "network-only" });
  log(`${sent.length} requests: ${sent.map((r) => `${r.method}${r.query ? "+query" : ""}`).join(", ")}`);
  return {
    email,
    me: [first, second].map(({ data: { me } }) => ({ email: me.email, displayName: me.displayName })),
    sent,
  };
}
