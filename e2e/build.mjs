// Builds the test page into a folder: relay-compiler checks the Relay
// documents against ../schema.graphql and writes their artifacts, then
// esbuild bundles src/page.js with the stock clients as npm installed them
// (and the CSS they import, Uppy Dashboard's, into page.css).
//
//   node e2e/build.mjs OUT_DIR
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(process.argv[2] ?? path.join(here, "build"));

try {
  execFileSync(path.join(here, "node_modules", ".bin", "relay-compiler"), [], { cwd: here, encoding: "utf8" });
} catch (error) {
  process.stderr.write(`relay-compiler failed:\n${error.stdout}${error.stderr}`);
  process.exit(1);
}

// What babel-plugin-relay does: graphql`query relayMeQuery …` becomes the
// artifact relay-compiler wrote for relayMeQuery.
const relayTags = {
  name: "relay-graphql-tags",
  setup(build) {
    build.onLoad({ filter: /src[\\/]relay\.js$/ }, (args) => {
      const source = readFileSync(args.path, "utf8");
      const imports = [];
      const contents = source.replace(
        /graphql`\s*(?:query|mutation|subscription|fragment)\s+(\w+)[^`]*`/g,
        (_, name) => {
          imports.push(`import __relay_${name} from "./__generated__/${name}.graphql.js";`);
          return `__relay_${name}`;
        },
      );
      return { contents: `${imports.join("\n")}\n${contents}`, loader: "js" };
    });
  },
};

mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: [path.join(here, "src", "page.js")],
  bundle: true,
  format: "esm",
  target: "chrome120",
  sourcemap: true,
  define: { "process.env.NODE_ENV": '"development"', __DEV__: "true" },
  outfile: path.join(out, "page.js"),
  plugins: [relayTags],
  logLevel: "warning",
});
copyFileSync(path.join(here, "index.html"), path.join(out, "index.html"));
