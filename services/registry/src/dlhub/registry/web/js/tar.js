// A POSIX ustar archive of in-memory files, gzipped when the browser has CompressionStream: the package
// the SDK would build (libs/client packaging.py), made in the page so that no build tool is needed.

const BLOCK = 512;
const encoder = new TextEncoder();

function field(header, offset, length, text) {
  const bytes = encoder.encode(text);
  if (bytes.length > length) throw new Error(`tar header field too long: ${text}`);
  header.set(bytes, offset);
}

function octal(value, length) {
  return value.toString(8).padStart(length - 1, "0") + "\0";
}

// name (100 bytes) and prefix (155 bytes): a longer path is split at a "/".
function splitPath(path) {
  if (encoder.encode(path).length <= 100) return ["", path];
  for (let at = path.indexOf("/"); at !== -1; at = path.indexOf("/", at + 1)) {
    const prefix = path.slice(0, at);
    const name = path.slice(at + 1);
    if (encoder.encode(prefix).length <= 155 && encoder.encode(name).length <= 100) return [prefix, name];
  }
  throw new Error(`path too long for a package: ${path}`);
}

function header(path, size, mtimeS) {
  const block = new Uint8Array(BLOCK);
  const [prefix, name] = splitPath(path);
  field(block, 0, 100, name);
  field(block, 100, 8, "0000644\0");
  field(block, 108, 8, octal(0, 8));
  field(block, 116, 8, octal(0, 8));
  field(block, 124, 12, octal(size, 12));
  field(block, 136, 12, octal(mtimeS, 12));
  field(block, 148, 8, "        ");
  block[156] = "0".charCodeAt(0);
  field(block, 257, 6, "ustar\0");
  field(block, 263, 2, "00");
  field(block, 345, 155, prefix);
  const sum = block.reduce((total, byte) => total + byte, 0);
  field(block, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return block;
}

// entries: [{path, file}] with file a Blob. Returns a Blob (gzip when possible) and its format's suffix.
export async function buildPackage(entries) {
  const parts = [];
  for (const { path, file } of entries) {
    const mtimeS = Math.floor((file.lastModified || Date.now()) / 1000);
    parts.push(header(path, file.size, mtimeS), file);
    const pad = (BLOCK - (file.size % BLOCK)) % BLOCK;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(BLOCK * 2));
  const tar = new Blob(parts, { type: "application/x-tar" });
  if (typeof CompressionStream === "undefined") return { blob: tar, filename: "package.tar" };
  const gzipped = await new Response(tar.stream().pipeThrough(new CompressionStream("gzip"))).blob();
  return { blob: new Blob([gzipped], { type: "application/gzip" }), filename: "package.tar.gz" };
}
