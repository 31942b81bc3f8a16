// The corrections kept in this browser (IndexedDB): each corrected photo, keyed by its content's sha256 (two photos
// of one name from two cameras are two records), with its bytes, the model's probabilities, the mask as corrected,
// whether it is accepted and held out; and the page's settings (the edge move chosen for a model, by the model's
// sha256). Every change is written before the page says it is done, so a reload or a crash of the tab loses
// nothing; only the user's "Clear" removes them. Every tab of the page hears every other's changes (changes()).
const DB = "lesion-page", IMAGES = "photos", SETTINGS = "settings", channel = new BroadcastChannel(DB);
let opened;

function db() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 2);
    request.onupgradeneeded = event => {
      const d = request.result, moved = d.createObjectStore(IMAGES, {keyPath: "key"});
      if (event.oldVersion < 1) d.createObjectStore(SETTINGS);
      if (event.oldVersion === 1) {  // version 1 kept photos by name: they keep that key, unique then
        const old = request.transaction.objectStore("corrections");
        old.getAll().onsuccess = e => {
          for (const r of e.target.result) moved.put({...r, key: `id:${r.id}`});
          d.deleteObjectStore("corrections");
        };
      }
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(new Error(`this browser keeps no corrections here (${request.error})`));
  });
  return opened;
}

async function transaction(store, mode, work) {  // resolves once the browser has written it to disk (strict)
  const t = (await db()).transaction(store, mode, {durability: "strict"}), result = work(t.objectStore(store));
  return new Promise((resolve, reject) => {
    t.oncomplete = () => resolve(result.result);
    t.onerror = t.onabort = () => reject(new Error(`the correction was not kept: ${t.error}`));
  });
}

export async function saveImage(record) {
  await transaction(IMAGES, "readwrite", s => s.put(record));
  channel.postMessage({saved: record.key});
}
export const savedImage = key => transaction(IMAGES, "readonly", s => s.get(key));
export const savedImages = () => transaction(IMAGES, "readonly", s => s.getAll());
export const saveSetting = (key, value) => transaction(SETTINGS, "readwrite", s => s.put(value, key));
export const setting = key => transaction(SETTINGS, "readonly", s => s.get(key));
export async function clearAll() {
  await Promise.all([IMAGES, SETTINGS].map(name => transaction(name, "readwrite", s => s.clear())));
  channel.postMessage({cleared: true});
}
// listen({saved: key} or {cleared: true}): another tab of this page kept a photo, or cleared them all
export const changes = listen => channel.addEventListener("message", e => listen(e.data));
