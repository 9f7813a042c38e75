// relay-runtime with artifacts from relay-compiler (run against Depot's
// schema.graphql by build.mjs), as a Relay app has them: `graphql` tags
// replaced by their artifacts at build time, here by build.mjs's esbuild
// plugin instead of babel-plugin-relay. The network layer sends uploadables
// as a GraphQL multipart request. Pagination is what usePaginationFragment
// does without React: the fragment is @refetchable, so the next page is a
// `node(id:)` query, and Relay's connection handler appends its edges.
import {
  Environment,
  Network,
  Observable,
  RecordSource,
  Store,
  commitMutation,
  createOperationDescriptor,
  fetchQuery,
  getSelector,
  graphql,
} from "relay-runtime";

import { GRAPHQL_URL, PASSWORD, drawPng, freshEmail, section } from "./common.js";

export function createRelayEnvironment(getToken) {
  function fetchFn(request, variables, _cacheConfig, uploadables) {
    const headers = {};
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    if (uploadables) {
      // The GraphQL multipart request spec: operations, a map, then the files.
      body = new FormData();
      const names = Object.keys(uploadables);
      body.append("operations", JSON.stringify({ query: request.text, variables }));
      body.append(
        "map",
        JSON.stringify(Object.fromEntries(names.map((name, i) => [String(i), [`variables.${name}`]]))),
      );
      names.forEach((name, i) => body.append(String(i), uploadables[name]));
      headers["x-depot-csrf"] = "1";
    } else {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify({ query: request.text, variables });
    }
    return Observable.from(
      fetch(GRAPHQL_URL, { method: "POST", headers, body }).then((response) => response.json()),
    );
  }
  return new Environment({ network: Network.create(fetchFn), store: new Store(new RecordSource()) });
}

const RegisterMutation = graphql`
  mutation relayRegisterMutation($input: RegisterInput!) {
    register(input: $input) { accessToken user { id } }
  }
`;

const UploadMutation = graphql`
  mutation relayUploadMutation($file: Upload!, $path: String) {
    uploadFile(file: $file, path: $path) { id path }
  }
`;

const MeQuery = graphql`
  query relayMeQuery {
    me { id email ...relay_files }
  }
`;

const FilesFragment = graphql`
  fragment relay_files on User
  @refetchable(queryName: "relayFilesPaginationQuery")
  @argumentDefinitions(first: { type: "Int", defaultValue: 2 }, after: { type: "String" }) {
    files(first: $first, after: $after, orderBy: { field: PATH, direction: ASC })
      @connection(key: "relay_files") {
      totalCount
      edges { node { id path } }
    }
  }
`;

const NodeQuery = graphql`
  query relayNodeQuery($id: ID!) {
    node(id: $id) { __typename id ... on File { path } }
  }
`;

function mutate(environment, mutation, variables, uploadables) {
  return new Promise((resolve, reject) =>
    commitMutation(environment, {
      mutation,
      variables,
      uploadables,
      onCompleted: (data, errors) => (errors ? reject(new Error(JSON.stringify(errors))) : resolve(data)),
      onError: reject,
    }),
  );
}

/** Register, upload five files through `uploadables`, page through them by the connection, refetch by node(id:). */
export async function relayScenario() {
  const { log } = section("relay");
  let token = null;
  const environment = createRelayEnvironment(() => token);
  const report = {};

  const registered = await mutate(environment, RegisterMutation, {
    input: { email: freshEmail("relay"), password: PASSWORD, displayName: "Relay" },
  });
  token = registered.register.accessToken;

  for (const name of ["e", "a", "d", "b", "c"]) {
    const file = new File([await drawPng(8, 8)], `${name}.png`, { type: "image/png" });
    await mutate(environment, UploadMutation, { file: null, path: `relay/${name}.png` }, { file });
  }
  log("uploaded 5 files through uploadables");

  // The first page with the query, like useLazyLoadQuery; kept in the store.
  const meOperation = createOperationDescriptor(MeQuery, {});
  environment.retain(meOperation);
  const me = (await fetchQuery(environment, MeQuery, {}).toPromise()).me;
  const selector = getSelector(FilesFragment, me);
  const read = () => environment.lookup(selector).data.files;
  report.pages = [read().edges.map((edge) => edge.node.path)];

  // Each next page through the refetch query Relay generated: node(id: me.id).
  const PaginationQuery = FilesFragment.metadata.refetch.operation;
  report.refetchQueryText = PaginationQuery.params.text;
  while (read().pageInfo.hasNextPage && report.pages.length < 10) {
    const before = read().edges.length;
    const variables = { id: me.id, first: 2, after: read().pageInfo.endCursor };
    environment.retain(createOperationDescriptor(PaginationQuery, variables));
    await fetchQuery(environment, PaginationQuery, variables).toPromise();
    report.pages.push(read().edges.slice(before).map((edge) => edge.node.path));
  }
  report.merged = read().edges.map((edge) => edge.node.path);
  report.totalCount = read().totalCount;
  log(`connection merged: ${report.merged.join(", ")}`);

  const firstId = read().edges[0].node.id;
  report.node = (await fetchQuery(environment, NodeQuery, { id: firstId }).toPromise()).node;
  return report;
}
