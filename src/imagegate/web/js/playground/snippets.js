// "Copy as curl / Python / Node": the request the playground sends, as code. The key is never
// in it: each snippet reads IMAGEGATE_API_KEY from the environment.

// Fields the openai SDKs take as named parameters; imagegate's others go in extra_body (Python)
// or ride along in the same object (Node sends every field it is given).
const SDK_FIELDS = {
  generations: ["model", "prompt", "n", "size", "quality", "style", "response_format",
    "output_format", "background", "stream", "partial_images"],
  edits: ["model", "prompt", "n", "size", "quality", "response_format", "output_format",
    "background", "stream", "partial_images"],
};

const json = (value) => JSON.stringify(value);
const files = (mask, comment) => `${comment} image.png: the image to edit${mask
  ? "; mask.png: the mask painted in the playground (Download the mask)" : ""}`;
const shellQuote = (text) => `'${String(text).replace(/'/g, "'\\''")}'`;

function python(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null) return "None";
  if (typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${json(k)}: ${python(v)}`).join(", ")}}`;
  }
  return json(value); // JSON strings and numbers are Python literals too
}

/** request: {kind: "generations"|"edits", fields: {...}, mask: bool}; base: ".../v1". */
export function curlSnippet({ kind, fields, mask }, base) {
  const lines = [`curl -N ${base}/images/${kind} \\`, '  -H "Authorization: Bearer $IMAGEGATE_API_KEY" \\'];
  if (kind === "generations") {
    lines.push("  -H 'Content-Type: application/json' \\", `  -d ${shellQuote(JSON.stringify(fields))}`);
  } else {
    lines.unshift(files(mask, "#"));
    lines.push("  -F image=@image.png \\");
    if (mask) lines.push("  -F mask=@mask.png \\");
    const parts = Object.entries(fields).map(([k, v]) => `  -F ${shellQuote(`${k}=${v}`)}`);
    lines.push(parts.join(" \\\n"));
  }
  return lines.join("\n");
}

function split(kind, fields) {
  const named = {};
  const extra = {};
  for (const [k, v] of Object.entries(fields)) (SDK_FIELDS[kind].includes(k) ? named : extra)[k] = v;
  return { named, extra };
}

export function pythonSnippet({ kind, fields, mask }, base) {
  const { named, extra } = split(kind, fields);
  const args = Object.entries(named).map(([k, v]) => `    ${k}=${python(v)},`);
  if (Object.keys(extra).length) args.push(`    extra_body=${python(extra)},`);
  const event = kind === "generations" ? "image_generation" : "image_edit";
  const head = ["import base64", "import os", "", "from openai import OpenAI", "",
    `client = OpenAI(base_url=${json(base)}, api_key=os.environ["IMAGEGATE_API_KEY"])`, ""];
  let call;
  if (kind === "generations") {
    call = ["stream = client.images.generate(", ...args, ")"];
  } else {
    const opened = mask ? 'open("image.png", "rb") as image, open("mask.png", "rb") as mask'
      : 'open("image.png", "rb") as image';
    call = [files(mask, "#"), `with ${opened}:`, "    stream = client.images.edit(",
      `        image=image,${mask ? " mask=mask," : ""}`, ...args.map((a) => `    ${a}`), "    )"];
  }
  const loop = ["done = 0", "for event in stream:",
    `    if event.type == "${event}.completed":`,
    '        done += 1',
    '        name = f"image-{done}.{event.output_format}"',
    "        with open(name, \"wb\") as out:",
    "            out.write(base64.b64decode(event.b64_json))",
    "        # imagegate's extension fields: seed, and url/expires_at with response_format url",
    "        print(name, event.model_extra.get(\"seed\"), event.model_extra.get(\"url\"))"];
  return [...head, ...call, ...loop].join("\n");
}

export function nodeSnippet({ kind, fields, mask }, base) {
  const entries = Object.entries(fields).map(([k, v]) => `  ${k}: ${json(v)},`);
  const event = kind === "generations" ? "image_generation" : "image_edit";
  const lines = ['import fs from "node:fs";', 'import OpenAI from "openai";', "",
    `const client = new OpenAI({ baseURL: ${json(base)}, apiKey: process.env.IMAGEGATE_API_KEY });`, "",
    "// imagegate's extension fields (seed, negative_prompt, ...) go in the same object",
    `const stream = await client.images.${kind === "generations" ? "generate" : "edit"}({`];
  if (kind === "edits") {
    lines.splice(lines.length - 1, 0, files(mask, "//"));
    lines.push('  image: fs.createReadStream("image.png"),');
    if (mask) lines.push('  mask: fs.createReadStream("mask.png"),');
  }
  lines.push(...entries, "});",
    "let done = 0;",
    "for await (const event of stream) {",
    `  if (event.type === "${event}.completed") {`,
    "    const name = `image-${++done}.${event.output_format}`;",
    '    fs.writeFileSync(name, Buffer.from(event.b64_json, "base64"));',
    "    console.log(name, event.seed, event.url);",
    "  }",
    "}");
  return lines.join("\n");
}
