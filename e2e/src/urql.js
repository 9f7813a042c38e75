// @urql/core with its own fetchExchange: queries go as GET (its default
// `preferGetMethod: "within-url-limit"`), files in the variables as a
// multipart request, which Depot accepts with `Apollo-Require-Preflight`
// (or `x-depot-csrf: 1`); subscriptions through subscriptionExchange and
// graphql-ws, as urql's docs set it up.
import { Client, fetchExchange, gql, subscriptionExchange } from "@urql/core";
import { createClient as createWsClient } from "graphql-ws";

import { GRAPHQL_URL, GRAPHQL_WS_URL, PASSWORD, drawPng, freshEmail, section } from "./common.js";

export function createUrqlClient(getToken) {
  const ws = createWsClient({
    url: GRAPHQL_WS_URL,
    connectionParams: () => ({ Authorization: `Bearer ${getToken()}` }),
  });
  return new Client({
    url: GRAPHQL_URL,
    exchanges: [
      fetchExchange,
      subscriptionExchange({
        forwardSubscription(request) {
          const input = { ...request, query: request.query || "" };
          return { subscribe: (sink) => ({ unsubscribe: ws.subscribe(input, sink) }) };
        },
      }),
    ],
    fetchOptions: () => {
      const token = getToken();
      return {
        headers: {
          "Apollo-Require-Preflight": "true",
          ...(token && { Authorization: `Bearer ${token}` }),
        },
      };
    },
  });
}

const REGISTER = gql`
  mutation ($input: RegisterInput!) {
    register(input: $input) { accessToken }
  }
`;

const UPLOAD_FILE = gql`
  mutation ($file: Upload!, $path: String) {
    uploadFile(file: $file, path: $path) { id path }
  }
`;

const FILES_PAGE = gql`
  query ($first: Int!, $after: String) {
    files(first: $first, after: $after, orderBy: { field: PATH, direction: ASC }) {
      totalCount
      edges { cursor node { id path } }
      pageInfo { hasNextPage endCursor hasPreviousPage startCursor }
    }
  }
`;

const NODE = gql`
  query ($id: ID!) {
    node(id: $id) { __typename id ... on File { path size } }
  }
`;

const START_VERIFY = gql`
  mutation ($fileId: ID!) {
    startJob(input: { verify: { fileId: $fileId } }) { id }
  }
`;

const JOB_EVENTS = gql`
  subscription ($jobId: ID!) {
    jobEvents(jobId: $jobId) { status progress }
  }
`;

const FINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

function ok(result) {
  if (result.error) throw result.error;
  return result.data;
}

/** Register, upload three files by multipart, page through them two at a time, fetch one by node(id:). */
export async function urqlScenario() {
  const { log } = section("urql");
  let token = null;
  const client = createUrqlClient(() => token);
  const report = {};

  const registered = ok(
    await client.mutation(REGISTER, {
      input: { email: freshEmail("urql"), password: PASSWORD, displayName: "urql" },
    }),
  );
  token = registered.register.accessToken;

  const paths = ["notes/a.png", "notes/b.png", "notes/c.png"];
  report.uploaded = [];
  for (const [index, path] of paths.entries()) {
    const file = new File([await drawPng(16, 16, index * 90)], "tile.png", { type: "image/png" });
    report.uploaded.push(ok(await client.mutation(UPLOAD_FILE, { file, path })).uploadFile);
  }
  log(`uploaded ${report.uploaded.length} files by multipart`);

  report.pages = [];
  report.pageInfos = [];
  let after = null;
  do {
    const { files } = ok(
      await client.query(FILES_PAGE, { first: 2, after }, { requestPolicy: "network-only" }),
    );
    report.pages.push(files.edges.map((edge) => edge.node.path));
    report.pageInfos.push({
      ...files.pageInfo,
      firstCursor: files.edges[0]?.cursor ?? null,
      lastCursor: files.edges.at(-1)?.cursor ?? null,
    });
    report.totalCount = files.totalCount;
    after = files.pageInfo.hasNextPage ? files.pageInfo.endCursor : null;
  } while (after !== null && report.pages.length < 10);
  log(`pages: ${JSON.stringify(report.pages)}`);

  report.node = ok(await client.query(NODE, { id: report.uploaded[1].id })).node;
  log(`node(id:) is a ${report.node.__typename} at ${report.node.path}`);

  // A verify job on that file, its events through urql's subscription.
  const { startJob } = ok(await client.mutation(START_VERIFY, { fileId: report.node.id }));
  report.jobEvents = await new Promise((resolve, reject) => {
    const seen = [];
    const { unsubscribe } = client.subscription(JOB_EVENTS, { jobId: startJob.id }).subscribe((result) => {
      if (result.error) return reject(result.error);
      seen.push(result.data.jobEvents);
      if (FINAL.has(result.data.jobEvents.status)) {
        unsubscribe();
        resolve(seen);
      }
    });
  });
  log(`verify job: ${report.jobEvents.map((event) => event.status).join(" → ")}`);
  return report;
}
