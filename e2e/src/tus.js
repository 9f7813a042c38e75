// Resumable uploads to Depot's tus endpoint (/files/tus/) with the stock
// clients: tus-js-client cut off mid-way and resumed as a page reloaded
// after a lost connection would (findPreviousUploads, then the offset the
// server reports), and Uppy's Dashboard with its Tus plugin, the file
// picked through the Dashboard's own file input and sent by its upload button.
import Uppy from "@uppy/core";
import Dashboard from "@uppy/dashboard";
import Tus from "@uppy/tus";
import "@uppy/core/css/style.min.css";
import "@uppy/dashboard/css/style.min.css";
import { gql } from "@apollo/client";
import { Upload } from "tus-js-client";

import { createApolloClient } from "./apollo.js";
import { API, PASSWORD, drawPng, freshEmail, section, sha256Hex } from "./common.js";

export const TUS_URL = `${API}/files/tus/`;
const MiB = 1024 * 1024;
// Small, so the test is quick, but several chunks: the cut lands in the second.
const SIZE = 3 * MiB + 4321;
const CHUNK = MiB;
const CUT_AFTER = 1.5 * MiB;

const REGISTER = gql`
  mutation TusRegister($input: RegisterInput!) {
    register(input: $input) { accessToken }
  }
`;
const FILES_AT = gql`
  query TusFiles($prefix: String!) {
    files(filter: { pathPrefix: $prefix }) { edges { node { id path size contentType sha256 } } }
  }
`;
const UPLOADS = gql`
  query TusUploads {
    uploads { edges { node { path offset length } } }
  }
`;

function randomBytes(size) {
  const bytes = new Uint8Array(size);
  for (let at = 0; at < size; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
  return bytes;
}

/** tus-js-client options as a page sets them for Depot: the endpoint, the token, the target path. */
function tusOptions(file, token, path) {
  return {
    endpoint: TUS_URL,
    chunkSize: CHUNK,
    headers: { Authorization: `Bearer ${token}` },
    metadata: { filename: file.name, filetype: file.type, path },
    removeFingerprintOnSuccess: true,
  };
}

/** The first attempt: aborted (its request cut off) once CUT_AFTER bytes have gone out. */
function uploadUntilCut(file, options) {
  return new Promise((resolve, reject) => {
    let cut = false;
    const upload = new Upload(file, {
      ...options,
      retryDelays: null,
      onProgress(sent) {
        if (cut || sent < CUT_AFTER) return;
        cut = true;
        upload.abort().then(() => resolve({ cutAt: sent, url: upload.url }), reject);
      },
      onSuccess: () => reject(new Error("tus: the upload finished before it was cut")),
      onError: reject,
    });
    upload.start();
  });
}

/** A new Upload for the same file, as after a reload: found in localStorage, resumed from HEAD. */
async function resume(file, options) {
  const seen = { headOffsets: [], patchOffsets: [] };
  await new Promise((resolve, reject) => {
    const upload = new Upload(file, {
      ...options,
      retryDelays: [200, 500, 1000, 2000],
      onBeforeRequest(request) {
        if (request.getMethod() === "PATCH") seen.patchOffsets.push(Number(request.getHeader("Upload-Offset")));
      },
      onAfterResponse(request, response) {
        if (request.getMethod() === "HEAD") seen.headOffsets.push(Number(response.getHeader("Upload-Offset")));
      },
      onSuccess: resolve,
      onError: reject,
    });
    upload.findPreviousUploads().then((previous) => {
      seen.previousUploads = previous.length;
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    }, reject);
  });
  return seen;
}

async function filesUnder(client, prefix) {
  const { data } = await client.query({ query: FILES_AT, variables: { prefix }, fetchPolicy: "network-only" });
  return data.files.edges.map(({ node }) => node);
}

/** Uppy's Dashboard, inline on the page, with the Tus plugin as docs/api.md configures it. */
async function dashboardUpload(element, token) {
  const target = document.createElement("div");
  element.append(target);
  const uppy = new Uppy({ autoProceed: false })
    .use(Dashboard, { inline: true, target, height: 320, proudlyDisplayPoweredByUppy: false })
    .use(Tus, { endpoint: TUS_URL, headers: { Authorization: `Bearer ${token}` } });
  const png = await drawPng(64, 48, 120);
  // What choosing a file in the Dashboard's "browse files" dialog does to its <input>.
  const input = [...target.querySelectorAll("input.uppy-Dashboard-input[type=file]")].find(
    (candidate) => candidate.name === "files[]" && !candidate.webkitdirectory,
  );
  if (!input) throw new Error("Uppy's Dashboard has no file input");
  const chosen = new DataTransfer();
  chosen.items.add(new File([png], "dashboard.png", { type: "image/png" }));
  input.files = chosen.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
  const button = await new Promise((resolve, reject) => {
    const started = performance.now();
    const look = () => {
      const found = target.querySelector(".uppy-StatusBar-actionBtn--upload");
      if (found) return resolve(found);
      if (performance.now() - started > 10000) return reject(new Error("no Dashboard upload button"));
      setTimeout(look, 50);
    };
    look();
  });
  const complete = new Promise((resolve) => uppy.once("complete", resolve));
  button.click();
  const result = await complete;
  if (result.failed?.length) throw new Error(`Uppy: ${result.failed.map((file) => file.error).join("; ")}`);
  return { expectedSha256: await sha256Hex(png), size: png.size };
}

/** tus-js-client, cut off and resumed; then Uppy's Dashboard + Tus. */
export async function tusScenario() {
  const { log, element } = section("tus");
  let token = null;
  const client = createApolloClient(() => token);
  const { data } = await client.mutate({
    mutation: REGISTER,
    variables: { input: { email: freshEmail("tus"), password: PASSWORD, displayName: "Tus" } },
  });
  token = data.register.accessToken;
  const report = {};

  const file = new File([randomBytes(SIZE)], "resume.bin", { type: "application/octet-stream" });
  report.size = file.size;
  report.expectedSha256 = await sha256Hex(file);
  const options = tusOptions(file, token, "tus/resume.bin");
  const cut = await uploadUntilCut(file, options);
  log(`tus-js-client: cut off after ${cut.cutAt} bytes sent`);
  report.cut = cut;
  // What the server kept meanwhile: an upload in progress, listed in GraphQL.
  const { data: pending } = await client.query({ query: UPLOADS, fetchPolicy: "network-only" });
  report.pending = pending.uploads.edges.map(({ node }) => node);
  report.resumed = await resume(file, options);
  log(`resumed from offset ${report.resumed.headOffsets[0]}`);
  report.files = await filesUnder(client, "tus");

  report.dashboard = await dashboardUpload(element, token);
  report.dashboard.files = await filesUnder(client, "dashboard.png");
  log(`Uppy Dashboard + Tus: ${report.dashboard.files.map((f) => f.path).join(", ")}`);
  return report;
}
