// A direct multipart upload from the page straight to S3 by Uppy's own AwsS3
// plugin (@uppy/aws-s3 6.3, Uppy 6), unmodified, with `shouldUseMultipart: true`:
// its `signRequest` option hands each S3 request to Depot's
// `signUploadRequest`, and the plugin sends it where Depot says (each part's
// PUT to S3, presigned; the create, list, complete and abort to Depot, which
// answers as S3 does). The upload is paused once its first part is in and
// resumed (the plugin lists the parts S3 holds and sends the rest); a second
// upload is removed from Uppy after its first part, which aborts it.
// S3 storage only.
import { gql } from "@apollo/client";
import AwsS3 from "@uppy/aws-s3";
import Uppy from "@uppy/core";

import { createApolloClient } from "./apollo.js";
import { PASSWORD, freshEmail, section, sha256Hex } from "./common.js";

const MiB = 1024 * 1024;
// Parts are 5 MiB (S3's least but the last): two parts, the second a little one.
const SIZE = 5 * MiB + 4321;

const REGISTER = gql`
  mutation MultipartRegister($input: RegisterInput!) {
    register(input: $input) { accessToken }
  }
`;
const SIGN_REQUEST = gql`
  mutation MultipartSignRequest($request: UploadRequestInput!, $file: CreateUploadInput) {
    signUploadRequest(request: $request, file: $file) { url key headers }
  }
`;
const PARTS = gql`
  query MultipartParts($id: ID!) {
    uploadParts(id: $id) { partNumber size }
  }
`;
const FILE = gql`
  query MultipartFile($id: ID!) {
    node(id: $id) { ... on File { id path size sha256 } }
  }
`;
const LEFT = gql`
  query MultipartLeft {
    uploads { edges { node { id } } }
    me { usage { usedBytes } }
  }
`;

/**
 * The AwsS3 plugin's `signRequest`, signed by Depot. Uppy proposes the key
 * (here the Uppy file's id, so the create can say which file); Depot answers
 * the create with its own, which the plugin sends with every later request.
 */
export function depotSignRequest(client, uppy) {
  return async (request) => {
    const file = request.uploadId ? null : uppy.getFile(request.key);
    const { data } = await client.mutate({
      mutation: SIGN_REQUEST,
      variables: {
        request,
        file: file && { path: file.meta.path ?? file.name, size: file.size, contentType: file.type },
      },
    });
    return data.signUploadRequest;
  };
}

function signedName({ method, uploadId, partNumber }) {
  if (!uploadId) return "create";
  if (partNumber) return `part ${partNumber}`;
  return { GET: "list", POST: "complete", DELETE: "abort" }[method];
}

export async function multipartScenario() {
  const { log } = section("multipart");
  let token = null;
  const client = createApolloClient(() => token);
  const { data } = await client.mutate({
    mutation: REGISTER,
    variables: { input: { email: freshEmail("multipart"), password: PASSWORD, displayName: "Multipart" } },
  });
  token = data.register.accessToken;
  const report = { signed: [] };

  const uppy = new Uppy({ autoProceed: false });
  const sign = depotSignRequest(client, uppy);
  uppy.use(AwsS3, {
    shouldUseMultipart: true,
    generateObjectKey: (file) => file.id,
    signRequest: (request) => (report.signed.push(signedName(request)), sign(request)),
  });

  const bytes = new Uint8Array(SIZE);
  for (let at = 0; at < SIZE; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
  const blob = new Blob([bytes], { type: "application/octet-stream" });
  report.size = SIZE;
  report.expectedSha256 = await sha256Hex(blob);

  // Paused once the first part is in S3, looked at, then resumed.
  let paused = null;
  uppy.on("s3-multipart:part-uploaded", (file, part) => {
    if (file.meta.path !== "multipart/big.bin" || part.PartNumber !== 1 || paused) return;
    uppy.pauseResume(file.id);
    paused = (async () => {
      const { key } = uppy.getFile(file.id).s3Multipart;
      const { data: held } = await client.query({ query: PARTS, variables: { id: key }, fetchPolicy: "network-only" });
      report.heldWhilePaused = held.uploadParts.map(({ partNumber, size }) => ({ partNumber, size }));
      log(`paused after part 1; S3 holds ${held.uploadParts.length} part(s); resuming`);
      uppy.pauseResume(file.id);
    })();
  });
  uppy.addFile({ name: "big.bin", type: blob.type, data: blob, meta: { path: "multipart/big.bin" } });
  const result = await uppy.upload();
  await paused;
  if (result.failed?.length) throw new Error(`Uppy: ${result.failed.map((f) => f.error).join("; ")}`);
  const [done] = result.successful;
  report.uploadURL = done.uploadURL;
  const { data: found } = await client.query({
    query: FILE,
    variables: { id: done.response.body.key },
    fetchPolicy: "network-only",
  });
  report.file = found.node;
  log(`completed ${report.file.path}`);

  // A second upload, removed from Uppy once its first part is in: the plugin aborts it.
  uppy.on("s3-multipart:part-uploaded", (file, part) => {
    if (file.meta.path === "multipart/dropped.bin" && part.PartNumber === 1) uppy.removeFile(file.id);
  });
  uppy.addFile({ name: "dropped.bin", type: blob.type, data: blob, meta: { path: "multipart/dropped.bin" } });
  await uppy.upload();
  // The abort is sent in the background; wait for Depot to have ended the upload.
  for (let tries = 0; ; tries += 1) {
    const { data: left } = await client.query({ query: LEFT, fetchPolicy: "network-only" });
    report.uploadsLeft = left.uploads.edges.length;
    report.usedBytes = left.me.usage.usedBytes;
    // Both read in one request, but by two resolvers: the abort may land between them.
    if ((report.uploadsLeft === 0 && Number(report.usedBytes) === SIZE) || tries === 50) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  log(`aborted the second upload; ${report.uploadsLeft} upload(s) left`);
  return report;
}
