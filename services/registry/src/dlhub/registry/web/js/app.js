// The catalog's entry point: picks the view for the URL and renders it into <main>.
import { renderAccount, renderSignInCallback } from "./auth.js";
import { renderCatalog } from "./catalog.js";
import { errorBox, h } from "./dom.js";
import { renderModel } from "./model.js";
import { renderPublish } from "./publish.js";
import { onRoute } from "./router.js";
import { renderTask } from "./task.js";

const main = document.getElementById("main");
let current = null;
let firstRender = true;

function route(path) {
  if (path === "/") return [renderCatalog, {}];
  if (path === "/publish") return [renderPublish, {}];
  if (path === "/signin/callback") return [renderSignInCallback, {}];
  let match = path.match(/^\/m\/([^/]+)\/([^/]+)$/);
  if (match) {
    const [name, version] = decodeURIComponent(match[2]).split("@");
    return [renderModel, { owner: decodeURIComponent(match[1]), name, version: version || null }];
  }
  match = path.match(/^\/tasks\/([^/]+)$/);
  if (match) return [renderTask, { taskId: decodeURIComponent(match[1]) }];
  return [null, {}];
}

async function render() {
  if (current) current.abort();
  const controller = new AbortController();
  current = controller;
  const [view, params] = route(location.pathname);
  main.setAttribute("aria-busy", "true");
  // "ready" marks a finished render (loadtest/web_pages.py times navigation start to it).
  delete document.body.dataset.ready;
  try {
    if (view === null) {
      document.title = "Not found · DLHub";
      main.replaceChildren(h("h1", null, "Not found"), h("p", null, h("a", { href: "/", "data-nav": true }, "Back to the catalog")));
    } else {
      await view(main, params, controller.signal);
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    main.replaceChildren(errorBox(error));
  } finally {
    if (current === controller) {
      main.removeAttribute("aria-busy");
      document.body.dataset.ready = "1";
      performance.mark("dlhub-ready");
    }
  }
  if (!firstRender && !controller.signal.aborted && !main.contains(document.activeElement)) main.focus();
  firstRender = false;
}

onRoute(render);
renderAccount(document.getElementById("account"));
render();
