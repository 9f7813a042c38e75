// Uppy (headless: @uppy/core with the @uppy/aws-s3 plugin) uploading through
// Depot's direct-upload tickets. The plugin asks `signRequest` for a URL per
// file; Depot's `createUpload` is that signer (its ticket is a presigned S3
// PUT on S3 storage, Depot's own PUT route on local storage), and each
// uploaded file becomes a File with `completeUpload`.
import AwsS3 from "@uppy/aws-s3";
import Uppy from "@uppy/core";

import { createApolloClient } from "./apollo.js";
import { PASSWORD, drawPng, freshEmail, section } from "./common.js";
import { gql } from "@apollo/client";

const REGISTER = gql`
  mutation UppyRegister($input: RegisterInput!) {
    register(input: $input) { accessToken }
  }
`;
const CREATE_UPLOAD = gql`
  mutation UppyCreateUpload($input: CreateUploadInput!) {
    createUpload(input: $input) { id url method headers }
  }
`;
const COMPLETE_UPLOAD = gql`
  mutation UppyCompleteUpload($id: ID!) {
    completeUpload(id: $id) { id path size contentType }
  }
`;

// Headers a page may not set itself (the browser sends Content-Length).
const FORBIDDEN = new Set(["content-length", "host"]);

export function createUppy(client) {
  const files = new Map(); // object key → Uppy file
  const tickets = new Map(); // Uppy file id → Depot upload ticket id
  const uppy = new Uppy({ autoProceed: false }).use(AwsS3, {
    shouldUseMultipart: false,
    generateObjectKey: (file) => {
      files.set(file.id, file);
      return file.id;
    },
    async signRequest({ key, contentType }) {
      const file = files.get(key);
      const { data } = await client.mutate({
        mutation: CREATE_UPLOAD,
        variables: {
          input: { path: file.meta.path ?? file.name, size: file.size, contentType },
        },
      });
      const ticket = data.createUpload;
      tickets.set(file.id, ticket.id);
      const headers = Object.fromEntries(
        Object.entries(ticket.headers).filter(([name]) => !FORBIDDEN.has(name.toLowerCase())),
      );
      return { url: ticket.url, headers };
    },
  });
  /** Upload every added file, then turn each into a Depot File. */
  async function uploadAll() {
    const result = await uppy.upload();
    if (result.failed?.length) throw new Error(`Uppy: ${result.failed.map((f) => f.error).join("; ")}`);
    const completed = [];
    for (const file of result.successful) {
      const { data } = await client.mutate({
        mutation: COMPLETE_UPLOAD,
        variables: { id: tickets.get(file.id) },
      });
      completed.push(data.completeUpload);
    }
    return completed;
  }
  return { uppy, uploadAll };
}

/** Two files added to Uppy, uploaded straight to storage by tickets, completed into Files. */
export async function uppyScenario() {
  const { log } = section("uppy");
  let token = null;
  const client = createApolloClient(() => token);
  const { data } = await client.mutate({
    mutation: REGISTER,
    variables: { input: { email: freshEmail("uppy"), password: PASSWORD, displayName: "Uppy" } },
  });
  token = data.register.accessToken;

  const { uppy, uploadAll } = createUppy(client);
  for (const name of ["one", "two"]) {
    const blob = await drawPng(40, 30);
    uppy.addFile({ name: `${name}.png`, type: "image/png", data: blob, meta: { path: `uppy/${name}.png` } });
  }
  const files = await uploadAll();
  log(`Uppy uploaded ${files.map((file) => file.path).join(", ")}`);
  return { files };
}
