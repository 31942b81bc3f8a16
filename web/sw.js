// The page's service worker: after the first visit the page, its WebAssembly runtime and the model are kept in
// this browser, so the page loads and segments with no network; and every response it hands the page carries the
// cross-origin isolation headers (COOP/COEP) that WebAssembly threads need, so a static host that sends none (a
// repository's pages) still gets threads after one reload. Network first: a new page or model replaces the old
// as soon as the host serves it (the page checks the model's sha256 against model.json either way).
const CACHE = "lesion-page-v1";
const ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"};

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", event => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", event => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(fromNetworkElseKept(request));
});

async function fromNetworkElseKept(request) {
  const cache = await caches.open(CACHE), key = new URL(request.url).pathname;  // one entry per file
  let response;
  try {  // by URL: the page's own conditional headers (a reload's) would bring a bodiless 304 back
    response = await fetch(request.url, {cache: "no-cache", credentials: "same-origin"});
    if (response.ok) await cache.put(key, response.clone());
  } catch {  // no network: what the last visit kept
    response = await cache.match(key);
    if (!response) return new Response("offline, and this file was never kept", {status: 504});
  }
  return isolated(response);
}

function isolated(response) {  // the same response with the isolation headers added
  const headers = new Headers(response.headers);
  for (const [name, value] of Object.entries(ISOLATION)) headers.set(name, value);
  return new Response(response.body, {status: response.status, statusText: response.statusText, headers});
}
