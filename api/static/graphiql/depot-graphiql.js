// Depot's GraphiQL page: GraphiQL with the explorer plugin, talking to the
// endpoint that served the page over HTTP, and over a WebSocket for
// subscriptions. A file, not an inline <script>, so the page's CSP allows
// scripts from 'self' only. React, ReactDOM, GraphiQL and
// GraphiQLPluginExplorer are the UMD globals the page loaded before this.
"use strict";

(function () {
  // The page's CSP admits an inline <style> only with this page's nonce,
  // which the server put on this script's tag. GraphiQL's dialogs lock
  // scrolling with one (react-remove-scroll), reading the nonce from here.
  window.__webpack_nonce__ = document.currentScript.nonce;

  const url = new URL(window.location.pathname, window.location.href);
  const subscriptionUrl = new URL(url);
  subscriptionUrl.protocol = url.protocol === "https:" ? "wss:" : "ws:";

  // GraphiQL sends the headers pane with each request and, for a
  // subscription, as the WebSocket's connection_init payload: one
  // {"Authorization": "Bearer …"} signs in both.
  const fetcher = GraphiQL.createFetcher({
    url: url.toString(),
    subscriptionUrl: subscriptionUrl.toString(),
  });

  const defaultQuery = `# Welcome to Depot's GraphiQL.
#
# Sign in with the register or login mutation, then put
#   {"Authorization": "Bearer <accessToken>"}
# in the headers pane below: queries and subscriptions both use it.
#
# Run: Ctrl-Enter. Complete: Ctrl-Space.

{
  __typename
}
`;

  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      plugins: [GraphiQLPluginExplorer.explorerPlugin()],
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    }),
  );
})();
