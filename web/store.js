// The corrections kept in this browser (IndexedDB): each corrected image with its photo's bytes, the model's
// probabilities, the mask as corrected, whether it is accepted and held out; and the page's settings (the edge
// move the user chose). Every change is written before the page says it is done, so a reload or a crash of the
// tab loses nothing; only the user's "Clear" removes them.
const DB = "lesion-page", IMAGES = "corrections", SETTINGS = "settings";
let opened;

function db() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore(IMAGES, {keyPath: "id"});
      request.result.createObjectStore(SETTINGS);
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

export const saveImage = record => transaction(IMAGES, "readwrite", s => s.put(record));
export const savedImages = () => transaction(IMAGES, "readonly", s => s.getAll());
export const saveSetting = (key, value) => transaction(SETTINGS, "readwrite", s => s.put(value, key));
export const setting = key => transaction(SETTINGS, "readonly", s => s.get(key));
export const clearAll = () => Promise.all([IMAGES, SETTINGS].map(name => transaction(name, "readwrite", s => s.clear())));
