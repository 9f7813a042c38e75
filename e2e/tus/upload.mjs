// Upload one file to Depot's tus endpoint with stock tus-js-client, cutting the
// connection at 30 % and at 90 % of the file, and resuming each time as a page
// would after a reload: findPreviousUploads() from the URL storage, then the
// offset the server reports (HEAD). Prints what happened as one JSON line.
//
//   node e2e/tus/upload.mjs <endpoint> <access token> <file> <path in Depot>
//
// The bytes are handed to the request in 256 KiB pieces a few milliseconds
// apart (a custom fileReader), so the cuts land where they are meant to even
// on loopback, where the whole file would otherwise be gone in one burst.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { FileUrlStorage, Upload } from 'tus-js-client';

const [endpoint, token, filePath, targetPath] = process.argv.slice(2);
const data = readFileSync(filePath);
const PIECE = 256 * 1024;
const cuts = [0.3, 0.9];
const urlStorage = new FileUrlStorage(join(mkdtempSync(join(tmpdir(), 'depot-tus-')), 'urls.json'));
const patchOffsets = [];
const headOffsets = [];
let current = null; // the attempt under way: its upload and how to end it

class PacedSource {
  constructor(buffer) {
    this.buffer = buffer;
    this.size = buffer.length;
  }

  slice(start, end) {
    const body = this.buffer.subarray(start, end);
    const stream = Readable.from(pieces(body, start), { objectMode: false });
    stream.size = body.length;
    return Promise.resolve({ value: stream, done: end >= this.size });
  }

  close() {}
}

async function* pieces(body, start) {
  for (let at = 0; at < body.length; at += PIECE) {
    if (cuts.length && start + at >= cuts[0] * data.length) {
      cuts.shift();
      const attempt = current;
      // abort() destroys the socket mid-request: the server sees the client go away.
      attempt.upload.abort().then(() => attempt.resolve({ cutAt: start + at }));
      return;
    }
    yield body.subarray(at, at + PIECE);
    await sleep(3);
  }
}

function attempt(resume) {
  return new Promise((resolve, reject) => {
    const upload = new Upload(data, {
      endpoint,
      urlStorage,
      fileReader: { openFile: (input) => Promise.resolve(new PacedSource(input)) },
      headers: { Authorization: `Bearer ${token}` },
      metadata: { filename: basename(filePath), path: targetPath, filetype: 'application/octet-stream' },
      retryDelays: [100, 300, 1000, 2000, 3000],
      removeFingerprintOnSuccess: true,
      onBeforeRequest(req) {
        if (req.getMethod() === 'PATCH') patchOffsets.push(Number(req.getHeader('Upload-Offset')));
      },
      onAfterResponse(req, res) {
        if (req.getMethod() === 'HEAD') headOffsets.push(Number(res.getHeader('Upload-Offset')));
      },
      onSuccess: () => resolve({ done: true, url: upload.url }),
      onError: reject,
    });
    current = { upload, resolve };
    const begin = resume
      ? upload.findPreviousUploads().then((previous) => {
          if (previous.length !== 1) throw new Error(`expected one stored upload, found ${previous.length}`);
          upload.resumeFromPreviousUpload(previous[0]);
        })
      : Promise.resolve();
    begin.then(() => upload.start(), reject);
  });
}

try {
  const attempts = [await attempt(false), await attempt(true), await attempt(true)];
  console.log(JSON.stringify({ attempts, patchOffsets, headOffsets, size: data.length }));
  process.exit(0); // kept-alive sockets would hold the process open
} catch (error) {
  console.error(String(error));
  process.exit(1);
}
