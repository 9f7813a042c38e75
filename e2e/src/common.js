// What every scenario shares: where Depot is, a fresh account's details, and
// test data made in the page (a PNG drawn on a canvas, its SHA-256).

const params = new URLSearchParams(location.search);

/** Depot's base URL, e.g. http://127.0.0.1:8123 (another origin than this page's). */
export const API = params.get("api") ?? "http://localhost:8000";
export const GRAPHQL_URL = `${API}/graphql`;
export const GRAPHQL_WS_URL = GRAPHQL_URL.replace(/^http/, "ws");
export const PASSWORD = "correct horse battery staple";

export function freshEmail(scenario) {
  return `${scenario}-${crypto.randomUUID().slice(0, 8)}@example.com`;
}

/** A width x height PNG drawn on a canvas: the image a thumbnails job resizes. */
export async function drawPng(width, height, hue = 200) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.fillStyle = `hsl(${hue} 70% 50%)`;
  context.fillRect(0, 0, width, height);
  context.fillStyle = "white";
  context.fillRect(width / 4, height / 4, width / 2, height / 2);
  return await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

export async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** A section of the page a scenario writes what it sees into (and a screenshot shows). */
export function section(name) {
  const element = document.createElement("section");
  element.id = name;
  element.innerHTML = `<h2>${name}</h2><ol class="log"></ol>`;
  document.body.append(element);
  const log = element.querySelector(".log");
  return {
    element,
    log(text) {
      const item = document.createElement("li");
      item.textContent = text;
      log.append(item);
    },
  };
}

/** Resolves once every <img> given has loaded (naturalWidth > 0), rejects on a broken one. */
export function loaded(images, timeoutMs = 15000) {
  return Promise.all(
    images.map(
      (image) =>
        new Promise((resolve, reject) => {
          const done = () =>
            image.naturalWidth > 0 ? resolve(image) : reject(new Error(`${image.src} is empty`));
          if (image.complete && image.src) return done();
          image.addEventListener("load", done, { once: true });
          image.addEventListener("error", () => reject(new Error(`${image.src} did not load`)), {
            once: true,
          });
          setTimeout(() => reject(new Error(`${image.src}: no load within ${timeoutMs} ms`)), timeoutMs);
        }),
    ),
  );
}
