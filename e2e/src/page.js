// The page's entry: each scenario a stock client runs against Depot, named
// for the driver (driver.mjs), which calls window.depotE2E.run(name) and
// reads back what it returns.
import { apolloScenario } from "./apollo.js";
import { multipartScenario } from "./multipart.js";
import { persistedQueriesScenario } from "./persisted.js";
import { relayScenario } from "./relay.js";
import { tusScenario } from "./tus.js";
import { uppyScenario } from "./uppy.js";
import { urqlScenario } from "./urql.js";

const scenarios = {
  apollo: apolloScenario,
  urql: urqlScenario,
  relay: relayScenario,
  uppy: uppyScenario,
  tus: tusScenario,
  persistedQueries: persistedQueriesScenario,
  multipart: multipartScenario, // S3 storage only
  // GraphiQL runs on Depot's own origin, so tests/test_graphiql.py drives it instead.
};

window.depotE2E = {
  names: Object.keys(scenarios),
  async run(name) {
    try {
      return { ok: true, report: await scenarios[name]() };
    } catch (error) {
      // Shown on the page too, so a failure's screenshot says what went wrong.
      const shown = document.createElement("pre");
      shown.className = "error";
      shown.textContent = `${name} failed: ${error}`;
      document.body.append(shown);
      return { ok: false, error: String(error?.stack ?? error), details: errorDetails(error) };
    }
  },
};

// Apollo's and urql's errors carry the GraphQL errors (with extensions.code) separately.
function errorDetails(error) {
  const graphQLErrors = error?.errors ?? error?.graphQLErrors;
  return graphQLErrors ? JSON.parse(JSON.stringify(graphQLErrors)) : null;
}
