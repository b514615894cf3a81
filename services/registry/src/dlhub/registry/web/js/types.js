// DLHub argument types (docs/api.md "typed inputs"): readable labels and example values.

export function typeLabel(type) {
  if (!type || typeof type !== "object") return "any";
  const name = String(type.type || "python object").toLowerCase();
  if (name === "ndarray") {
    const shape = Array.isArray(type.shape) ? `[${type.shape.map((n) => (n === null ? "?" : n)).join(", ")}]` : "";
    return `ndarray${type.item_type ? " of " + typeLabel(type.item_type) : ""} ${shape}`.trim();
  }
  if (name === "list") return `list of ${typeLabel(type.item_type)}`;
  if (name === "tuple") return `tuple (${(type.element_types || []).map(typeLabel).join(", ")})`;
  if (name === "dict" && type.properties && typeof type.properties === "object") {
    return `dict {${Object.entries(type.properties).map(([key, value]) => `${key}: ${typeLabel(value)}`).join(", ")}}`;
  }
  return name;
}

export const SCALARS = new Set(["string", "integer", "float", "number", "boolean"]);

export function exampleOf(type, depth = 0) {
  const name = String((type && type.type) || "python object").toLowerCase();
  if (depth > 4) return null;
  switch (name) {
    case "string": return "text";
    case "integer": return 1;
    case "float": case "number": return 1.0;
    case "boolean": return true;
    case "list": return [exampleOf(type.item_type, depth + 1)];
    case "tuple": return (type.element_types || []).map((t) => exampleOf(t, depth + 1));
    case "dict": return Object.fromEntries(Object.entries(type.properties || {}).map(([k, v]) => [k, exampleOf(v, depth + 1)]));
    case "ndarray": {
      const shape = Array.isArray(type.shape) ? type.shape : [null];
      const build = (level) => (level >= shape.length ? 0.0 : Array.from({ length: shape[level] || 1 }, () => build(level + 1)));
      return build(0);
    }
    case "file": return { url: "https://example.org/data.csv" };
    default: return null;
  }
}

// The field path of a dict key in the registry's error messages (dlhub.common.filerefs.key_part).
export function keyPart(key) {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `.${key}` : `['${key.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}']`;
}

// JSON as a Python literal (the SDK snippet).
export function pyLiteral(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(pyLiteral).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyLiteral(v)}`).join(", ")}}`;
}

export function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}
