// Apollo Client 4 as a frontend sets it up for Depot: apollo-upload-client's
// UploadHttpLink for queries, mutations and multipart uploads, graphql-ws for
// subscriptions, the access token added by a SetContextLink. Nothing is
// patched: the only Depot-specific lines are the URLs, the Authorization
// header, and `Apollo-Require-Preflight` (Depot refuses a multipart POST
// without a header a cross-site form cannot send).
import { ApolloClient, ApolloLink, InMemoryCache, gql } from "@apollo/client";
import { SetContextLink } from "@apollo/client/link/context";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import UploadHttpLink from "apollo-upload-client/UploadHttpLink.mjs";
import { OperationTypeNode } from "graphql";
import { createClient } from "graphql-ws";

import {
  GRAPHQL_URL,
  GRAPHQL_WS_URL,
  PASSWORD,
  drawPng,
  freshEmail,
  loaded,
  section,
  sha256Hex,
} from "./common.js";

export function createApolloClient(getToken) {
  const auth = new SetContextLink(({ headers }) => {
    const token = getToken();
    return { headers: { ...headers, ...(token && { Authorization: `Bearer ${token}` }) } };
  });
  const http = new UploadHttpLink({
    uri: GRAPHQL_URL,
    headers: { "Apollo-Require-Preflight": "true" },
  });
  // connectionParams is read when the socket opens (lazily, at the first
  // subscription), so the token of whoever signed in by then is sent.
  const ws = new GraphQLWsLink(
    createClient({
      url: GRAPHQL_WS_URL,
      connectionParams: () => ({ Authorization: `Bearer ${getToken()}` }),
    }),
  );
  const link = ApolloLink.split(
    ({ operationType }) => operationType === OperationTypeNode.SUBSCRIPTION,
    ws,
    ApolloLink.from([auth, http]),
  );
  return new ApolloClient({ link, cache: new InMemoryCache() });
}

const REGISTER = gql`
  mutation Register($input: RegisterInput!) {
    register(input: $input) {
      accessToken
      user { id email }
    }
  }
`;

const FILE_FIELDS = gql`
  fragment FileFields on File { id path size contentType sha256 }
`;

const UPLOAD_FILE = gql`
  mutation UploadFile($file: Upload!, $path: String) {
    uploadFile(file: $file, path: $path) { ...FileFields }
  }
  ${FILE_FIELDS}
`;

const CREATE_UPLOAD = gql`
  mutation CreateUpload($input: CreateUploadInput!) {
    createUpload(input: $input) { id url method headers expiresAt }
  }
`;

const COMPLETE_UPLOAD = gql`
  mutation CompleteUpload($id: ID!) {
    completeUpload(id: $id) { ...FileFields }
  }
  ${FILE_FIELDS}
`;

const START_THUMBNAILS = gql`
  mutation StartThumbnails($fileId: ID!, $sizes: [Int!]!) {
    startJob(input: { thumbnails: { fileId: $fileId, sizes: $sizes } }) { id status }
  }
`;

const JOB_EVENTS = gql`
  subscription JobEvents($jobId: ID!) {
    jobEvents(jobId: $jobId) { cursor status progress message }
  }
`;

const MY_EVENTS = gql`
  subscription MyEvents {
    myEvents { cursor type jobId fileId path status }
  }
`;

/** Collects myEvents from now on; ``until(test)`` resolves with them once one passes ``test``. */
function watchMyEvents(client, list) {
  const seen = [];
  const waiting = [];
  const subscription = client.subscribe({ query: MY_EVENTS }).subscribe({
    next({ data, error }) {
      if (error) return waiting.forEach(({ reject }) => reject(error));
      seen.push(data.myEvents);
      const item = document.createElement("li");
      item.textContent = `${data.myEvents.type} ${data.myEvents.path ?? data.myEvents.status}`;
      list.append(item);
      for (const wait of waiting) if (wait.test(data.myEvents)) wait.resolve(seen);
    },
  });
  return {
    until(test, timeoutMs = 20000) {
      return new Promise((resolve, reject) => {
        if (seen.some(test)) return resolve(seen);
        waiting.push({ test, resolve, reject });
        setTimeout(() => reject(new Error(`myEvents: nothing matched within ${timeoutMs} ms`)), timeoutMs);
      }).finally(() => subscription.unsubscribe());
    },
  };
}

const JOB_OUTPUTS = gql`
  query JobOutputs($id: ID!) {
    job(id: $id) {
      id
      status
      outputs(first: 10) { edges { node { id path metadata downloadUrl } } }
    }
  }
`;

/** Register, upload by multipart and by direct PUT, run a thumbnails job live, show its outputs. */
export async function apolloScenario() {
  const { log, element } = section("apollo");
  let token = null;
  const client = createApolloClient(() => token);
  const report = {};

  const { data: registered } = await client.mutate({
    mutation: REGISTER,
    variables: { input: { email: freshEmail("apollo"), password: PASSWORD, displayName: "Apollo" } },
  });
  token = registered.register.accessToken;
  report.email = registered.register.user.email;
  log(`registered ${report.email}`);
  // Opened first, so it is live long before the job it reports on starts.
  const myEventsList = document.createElement("ol");
  myEventsList.className = "my-events";
  element.append(myEventsList);
  const myEvents = watchMyEvents(client, myEventsList);

  // Multipart upload: a File in the variables is all apollo-upload-client needs.
  const png = await drawPng(320, 200);
  const file = new File([png], "canvas.png", { type: "image/png" });
  const { data: uploaded } = await client.mutate({
    mutation: UPLOAD_FILE,
    variables: { file, path: "photos/canvas.png" },
  });
  report.multipart = { ...uploaded.uploadFile, expectedSha256: await sha256Hex(png) };
  log(`multipart upload: ${uploaded.uploadFile.path} (${uploaded.uploadFile.contentType})`);

  // Direct upload: a ticket, the bytes PUT to its URL as it says, then completeUpload.
  const direct = await drawPng(240, 240, 30);
  const directSha256 = await sha256Hex(direct);
  const { data: ticketed } = await client.mutate({
    mutation: CREATE_UPLOAD,
    variables: {
      input: { path: "photos/direct.png", size: direct.size, contentType: "image/png", sha256: directSha256 },
    },
  });
  const ticket = ticketed.createUpload;
  const put = await fetch(ticket.url, { method: ticket.method, headers: ticket.headers, body: direct });
  await put.arrayBuffer(); // read to the end (S3 answers with an empty body)
  if (!put.ok) throw new Error(`direct upload ${ticket.method} answered ${put.status}`);
  const { data: completed } = await client.mutate({
    mutation: COMPLETE_UPLOAD,
    variables: { id: ticket.id },
  });
  report.direct = { ...completed.completeUpload, putStatus: put.status, expectedSha256: directSha256 };
  log(`direct upload: ${completed.completeUpload.path} (PUT ${put.status})`);

  // A thumbnails job, its events rendered as they arrive.
  const { data: started } = await client.mutate({
    mutation: START_THUMBNAILS,
    variables: { fileId: report.multipart.id, sizes: [64, 128] },
  });
  const jobId = started.startJob.id;
  const events = document.createElement("ol");
  events.className = "job-events";
  element.append(events);
  report.events = await new Promise((resolve, reject) => {
    const seen = [];
    client.subscribe({ query: JOB_EVENTS, variables: { jobId } }).subscribe({
      next({ data, error }) {
        if (error) return reject(error);
        seen.push(data.jobEvents);
        const item = document.createElement("li");
        item.textContent = `${data.jobEvents.status} ${Math.round(data.jobEvents.progress * 100)} %`;
        events.append(item);
      },
      error: reject,
      complete: () => resolve(seen),
    });
  });
  report.renderedEvents = events.children.length;
  report.myEvents = await myEvents.until(
    (event) => event.type === "JOB_STATUS" && event.jobId === jobId && event.status === "SUCCEEDED",
  );
  log(`job ${jobId}: ${report.events.map((event) => event.status).join(" → ")}`);

  const { data: finished } = await client.query({
    query: JOB_OUTPUTS,
    variables: { id: jobId },
    fetchPolicy: "network-only",
  });
  const images = finished.job.outputs.edges.map(({ node }) => {
    const image = document.createElement("img");
    image.alt = node.path;
    image.src = node.downloadUrl;
    element.append(image);
    return image;
  });
  await loaded(images);
  report.jobStatus = finished.job.status;
  report.thumbnails = images.map((image) => ({
    src: image.src,
    naturalWidth: image.naturalWidth,
    naturalHeight: image.naturalHeight,
  }));
  log(`${images.length} thumbnails shown`);
  return report;
}
