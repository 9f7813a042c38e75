// A direct multipart upload from the page straight to S3, through Depot's
// five multipart fields, written as the five functions an S3 multipart
// uploader takes (the shape of Uppy 3 and 4's AwsS3 options and of
// Companion's routes): create, sign a part, list the parts sent, complete,
// abort. The page sends one part, "reloads" (a fresh client that knows only
// the upload's id), lists what S3 holds, sends the rest and completes; a
// second upload is aborted. S3 storage only: the page PUTs to presigned URLs.
import { gql } from "@apollo/client";

import { createApolloClient } from "./apollo.js";
import { PASSWORD, freshEmail, section, sha256Hex } from "./common.js";

const MiB = 1024 * 1024;
// S3's least part but the last: two parts, the second a little one.
const PART = 5 * MiB;
const SIZE = PART + 4321;

const REGISTER = gql`
  mutation MultipartRegister($input: RegisterInput!) {
    register(input: $input) { accessToken }
  }
`;
const CREATE = gql`
  mutation MultipartCreate($input: CreateUploadInput!) {
    createMultipartUpload(input: $input) { uploadId key upload { id path length } }
  }
`;
const SIGN = gql`
  mutation MultipartSign($id: ID!, $partNumber: Int!) {
    signUploadPart(id: $id, partNumber: $partNumber) { url method headers }
  }
`;
const PARTS = gql`
  query MultipartParts($id: ID!) {
    uploadParts(id: $id) { partNumber size etag }
  }
`;
const COMPLETE = gql`
  mutation MultipartComplete($id: ID!, $parts: [UploadPartInput!]!) {
    completeMultipartUpload(id: $id, parts: $parts) { id path size contentType sha256 }
  }
`;
const CANCEL = gql`
  mutation MultipartCancel($id: ID!) {
    cancelUpload(id: $id)
  }
`;
const UPLOADS = gql`
  query MultipartUploads {
    uploads { edges { node { id path } } }
  }
`;

// Headers a page may not set itself (the browser sends Content-Length).
const FORBIDDEN = new Set(["content-length", "host"]);

/** The five functions, each one Depot field; `file.meta.depotUpload` is Depot's upload id. */
export function multipartFunctions(client) {
  return {
    async createMultipartUpload(file) {
      const { data } = await client.mutate({
        mutation: CREATE,
        variables: { input: { path: file.meta.path ?? file.name, size: file.size, contentType: file.type } },
      });
      const { uploadId, key, upload } = data.createMultipartUpload;
      file.meta.depotUpload = upload.id;
      return { uploadId, key };
    },
    async signPart(file, { partNumber }) {
      const { data } = await client.mutate({
        mutation: SIGN,
        variables: { id: file.meta.depotUpload, partNumber },
      });
      const { url, headers } = data.signUploadPart;
      return {
        url,
        headers: Object.fromEntries(Object.entries(headers).filter(([name]) => !FORBIDDEN.has(name.toLowerCase()))),
      };
    },
    async listParts(file) {
      const { data } = await client.query({
        query: PARTS,
        variables: { id: file.meta.depotUpload },
        fetchPolicy: "network-only",
      });
      return data.uploadParts.map(({ partNumber, size, etag }) => ({ PartNumber: partNumber, Size: size, ETag: etag }));
    },
    async completeMultipartUpload(file, { parts }) {
      const { data } = await client.mutate({
        mutation: COMPLETE,
        variables: { id: file.meta.depotUpload, parts: parts.map((p) => ({ partNumber: p.PartNumber, etag: p.ETag })) },
      });
      return data.completeMultipartUpload;
    },
    async abortMultipartUpload(file) {
      await client.mutate({ mutation: CANCEL, variables: { id: file.meta.depotUpload } });
    },
  };
}

/** PUT one part to its presigned URL; S3's ETag (exposed by the bucket's CORS rule). */
async function putPart(functions, file, partNumber) {
  const { url, headers } = await functions.signPart(file, { partNumber });
  const body = file.data.slice((partNumber - 1) * PART, partNumber * PART);
  const response = await fetch(url, { method: "PUT", headers, body });
  await response.arrayBuffer();
  if (!response.ok) throw new Error(`part ${partNumber}: S3 answered ${response.status}`);
  const etag = response.headers.get("ETag");
  if (!etag) throw new Error(`part ${partNumber}: no ETag readable (the bucket's CORS must expose it)`);
  return { PartNumber: partNumber, ETag: etag };
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
  const report = { calls: [] };
  const counted = (functions) =>
    Object.fromEntries(
      Object.entries(functions).map(([name, call]) => [name, (...args) => (report.calls.push(name), call(...args))]),
    );

  const bytes = new Uint8Array(SIZE);
  for (let at = 0; at < SIZE; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
  const blob = new Blob([bytes], { type: "application/octet-stream" });
  report.size = SIZE;
  report.expectedSha256 = await sha256Hex(blob);
  const file = { name: "big.bin", type: blob.type, size: SIZE, data: blob, meta: { path: "multipart/big.bin" } };

  const before = counted(multipartFunctions(client));
  await before.createMultipartUpload(file);
  await putPart(before, file, 1);
  log("part 1 sent; the page reloads");

  // After the reload: a new client, and the upload's id kept (as Uppy keeps it in localStorage).
  const after = counted(multipartFunctions(createApolloClient(() => token)));
  const resumed = { ...file, meta: { ...file.meta } };
  const held = await after.listParts(resumed);
  report.listed = held;
  const parts = [...held];
  for (let number = held.length + 1; (number - 1) * PART < SIZE; number += 1) {
    parts.push(await putPart(after, resumed, number));
  }
  report.file = await after.completeMultipartUpload(resumed, { parts });
  log(`completed ${report.file.path} from ${parts.length} parts`);

  // A second upload, given up after its first part.
  const dropped = { ...file, meta: { path: "multipart/dropped.bin" } };
  await after.createMultipartUpload(dropped);
  await putPart(after, dropped, 1);
  await after.abortMultipartUpload(dropped);
  const { data: left } = await client.query({ query: UPLOADS, fetchPolicy: "network-only" });
  report.uploadsLeft = left.uploads.edges.length;
  return report;
}
