// Node client libraries called as their own docs call them, against a live imagegate.
//
//   node cases.mjs CASE
//
// Environment: IMAGEGATE_API_URL (".../v1"), IMAGEGATE_API_KEY, IMAGEGATE_MODEL,
// IMAGEGATE_GPT_IMAGE_MODEL (for calls written for gpt-image-1), and IMAGEGATE_PICTURES (a folder holding image.png and mask.png for edits and variations).
// Prints one JSON line: {"images": [base64 of each image file the client handed back], ...}.
// tests/test_clients_node.py decodes every image and checks its size; a client's own error
// exits non-zero with its message on stderr.

import fs from "node:fs";
import path from "node:path";

const API_URL = process.env.IMAGEGATE_API_URL;
const API_KEY = process.env.IMAGEGATE_API_KEY;
const MODEL = process.env.IMAGEGATE_MODEL;
const GPT_IMAGE_MODEL = process.env.IMAGEGATE_GPT_IMAGE_MODEL;
const PICTURES = process.env.IMAGEGATE_PICTURES;
const PROMPT = "a red fox in the snow";
const SIZE = "64x64";

const picture = (name) => path.join(PICTURES, name);
const fromBytes = (bytes) => Buffer.from(bytes).toString("base64");

// A signed link is fetched without the key, as a browser or chat UI would.
async function fetched(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${await response.text()}`);
  return fromBytes(await response.arrayBuffer());
}

// ------------------------------------------------------------------------------------------
// openai-node, 7 ("openai") and 6 ("openai-v6"): the same calls on both majors

function openaiCases(pkg) {
  const client = async () => {
    const { default: OpenAI } = await import(pkg);
    return new OpenAI({ baseURL: API_URL, apiKey: API_KEY });
  };
  const toFile = async (...args) => (await import(pkg)).toFile(...args);

  return {
    // The DALL-E way: a link to fetch.
    async "generate-url"() {
      const result = await (await client()).images.generate({
        model: MODEL, prompt: PROMPT, size: SIZE, response_format: "url",
      });
      return { images: [await fetched(result.data[0].url)] };
    },
    // OpenAI's documented gpt-image-1 call: no response_format, base64 read without asking.
    async "generate-b64"() {
      const result = await (await client()).images.generate({
        model: GPT_IMAGE_MODEL, prompt: PROMPT, size: SIZE,
      });
      return { images: [result.data[0].b64_json] };
    },
    async "edit-mask-url"() {
      const result = await (await client()).images.edit({
        model: MODEL,
        image: fs.createReadStream(picture("image.png")),
        mask: fs.createReadStream(picture("mask.png")),
        prompt: "a sunlit indoor lounge area with a pool",
        size: SIZE,
        response_format: "url",
      });
      return { images: [await fetched(result.data[0].url)] };
    },
    // The documented gpt-image-1 edit: toFile images, base64 read without asking.
    async "edit-mask-b64"() {
      const result = await (await client()).images.edit({
        model: GPT_IMAGE_MODEL,
        image: await toFile(fs.createReadStream(picture("image.png")), null,
          { type: "image/png" }),
        mask: await toFile(fs.createReadStream(picture("mask.png")), null,
          { type: "image/png" }),
        prompt: "a sunlit indoor lounge area with a pool",
        size: SIZE,
      });
      return { images: [result.data[0].b64_json] };
    },
    async variation() {
      const result = await (await client()).images.createVariation({
        model: MODEL, image: fs.createReadStream(picture("image.png")), n: 1, size: SIZE,
      });
      return { images: [await fetched(result.data[0].url)] };
    },
    async "stream-generate"() {
      const stream = await (await client()).images.generate({
        model: MODEL, prompt: PROMPT, size: SIZE, quality: "high", stream: true,
        partial_images: 2,
      });
      const images = [], types = [];
      for await (const event of stream) {
        types.push(event.type);
        images.push(event.b64_json);
      }
      return { images, types };
    },
    async "stream-edit"() {
      const stream = await (await client()).images.edit({
        model: MODEL,
        image: fs.createReadStream(picture("image.png")),
        mask: fs.createReadStream(picture("mask.png")),
        prompt: "a pool", size: SIZE, quality: "high", stream: true, partial_images: 1,
      });
      const images = [], types = [];
      for await (const event of stream) {
        types.push(event.type);
        images.push(event.b64_json);
      }
      return { images, types };
    },
    // The Responses API with the image_generation tool, as OpenAI's image generation guide.
    async responses() {
      const response = await (await client()).responses.create({
        model: MODEL,
        input: "Generate an image of gray tabby cat hugging an otter with an orange scarf",
        tools: [{ type: "image_generation" }],
      });
      const images = response.output
        .filter((output) => output.type === "image_generation_call")
        .map((output) => output.result);
      return { images };
    },
    async "responses-stream"() {
      const stream = await (await client()).responses.create({
        model: MODEL,
        input: "Draw a gorgeous image of a river made of white owl feathers",
        stream: true,
        tools: [{ type: "image_generation", partial_images: 2, quality: "high" }],
      });
      const images = [], types = [];
      for await (const event of stream) {
        if (event.type === "response.image_generation_call.partial_image") {
          types.push(event.type);
          images.push(event.partial_image_b64);
        } else if (event.type === "response.output_item.done"
                   && event.item.type === "image_generation_call") {
          types.push(event.type);
          images.push(event.item.result);
        }
      }
      return { images, types };
    },
    // A model whose weights are missing: a 503 the SDK must not retry (x-should-retry: false).
    async "missing-weights"() {
      const { default: OpenAI } = await import(pkg);
      const sent = [];
      const client = new OpenAI({
        baseURL: API_URL, apiKey: API_KEY,
        fetch: (url, init) => { sent.push(String(url)); return fetch(url, init); },
      });
      try {
        await client.images.generate({ model: "sd-turbo", prompt: PROMPT, size: SIZE });
      } catch (error) {
        return { images: [], status: error.status, code: error.code, sent: sent.length };
      }
      throw new Error("sd-turbo without weights answered");
    },
    // Chat with images, OpenRouter's shape: `message.images[].image_url.url`.
    async chat() {
      const completion = await (await client()).chat.completions.create({
        model: MODEL, messages: [{ role: "user", content: PROMPT }],
        modalities: ["image", "text"],
      });
      const message = completion.choices[0].message;
      const images = [];
      for (const image of message.images) {
        const url = image.image_url.url;
        images.push(url.startsWith("data:") ? url.split(",")[1] : await fetched(url));
      }
      return { images };
    },
    // Streamed chat: the images ride on a chunk's `delta.images`.
    async "chat-stream"() {
      const stream = await (await client()).chat.completions.create({
        model: MODEL, messages: [{ role: "user", content: PROMPT }],
        modalities: ["image", "text"], stream: true,
      });
      const images = [];
      for await (const chunk of stream) {
        for (const image of chunk.choices[0]?.delta?.images ?? []) {
          images.push(image.image_url.url.split(",")[1]);
        }
      }
      return { images };
    },
  };
}

// ------------------------------------------------------------------------------------------
// The AI SDK: ai 7 with @ai-sdk/openai 4, and ai 6 with @ai-sdk/openai 3

function aiSdkCases(aiPkg, openaiPkg) {
  const provider = async () =>
    (await import(openaiPkg)).createOpenAI({ baseURL: API_URL, apiKey: API_KEY });
  return {
    async generate() {
      const { generateImage } = await import(aiPkg);
      const { image } = await generateImage({
        model: (await provider()).image(MODEL), prompt: PROMPT, size: SIZE,
      });
      return { images: [fromBytes(image.uint8Array)] };
    },
    // For `gpt-image-*` names the AI SDK sends no response_format and reads b64_json.
    async "generate-gpt-image"() {
      const { generateImage } = await import(aiPkg);
      const { image } = await generateImage({
        model: (await provider()).image(GPT_IMAGE_MODEL), prompt: PROMPT, size: SIZE,
      });
      return { images: [fromBytes(image.uint8Array)] };
    },
    // Edits: the AI SDK reads b64_json whatever the model.
    async edit() {
      const { generateImage } = await import(aiPkg);
      const { images } = await generateImage({
        model: (await provider()).image(MODEL),
        prompt: {
          text: "a sunlit indoor lounge area with a pool",
          images: [fs.readFileSync(picture("image.png"))],
          mask: fs.readFileSync(picture("mask.png")),
        },
        size: SIZE,
      });
      return { images: images.map((image) => fromBytes(image.uint8Array)) };
    },
    // `openai(model)` is the Responses API; the image comes back as the tool's result.
    async "text-responses"() {
      const { generateText } = await import(aiPkg);
      const openai = await provider();
      const result = await generateText({
        model: openai(MODEL),
        prompt: "Generate an image of a cat wearing a hat.",
        tools: { image_generation: openai.tools.imageGeneration({ outputFormat: "png" }) },
      });
      const images = result.staticToolResults
        .filter((toolResult) => toolResult.toolName === "image_generation")
        .map((toolResult) => toolResult.output.result);
      return { images };
    },
    // streamText through /v1/responses: each preview arrives as a tool result before the image.
    async "stream-responses"() {
      const { streamText } = await import(aiPkg);
      const openai = await provider();
      const result = streamText({
        model: openai(MODEL),
        prompt: "Generate an image of a cat wearing a hat.",
        tools: {
          image_generation: openai.tools.imageGeneration({ partialImages: 2, quality: "high" }),
        },
      });
      const images = [];
      for await (const part of result.fullStream) {
        if (part.type === "error") throw part.error;
        if (part.type === "tool-result" && part.toolName === "image_generation") {
          images.push(part.output.result);
        }
      }
      return { images };
    },
  };
}

// ------------------------------------------------------------------------------------------
// The AI SDK's OpenAI-compatible provider (`@ai-sdk/openai-compatible` 3, with ai 7)

function compatibleCases() {
  const model = async () => {
    const { createOpenAICompatible } = await import("@ai-sdk/openai-compatible");
    return createOpenAICompatible({ name: "imagegate", baseURL: API_URL, apiKey: API_KEY })
      .imageModel(MODEL);
  };
  return {
    async generate() {
      const { generateImage } = await import("ai");
      const { image } = await generateImage({ model: await model(), prompt: PROMPT, size: SIZE });
      return { images: [fromBytes(image.uint8Array)] };
    },
    async edit() {
      const { generateImage } = await import("ai");
      const { images } = await generateImage({
        model: await model(),
        prompt: {
          text: "a sunlit indoor lounge area with a pool",
          images: [fs.readFileSync(picture("image.png"))],
          mask: fs.readFileSync(picture("mask.png")),
        },
        size: SIZE,
      });
      return { images: images.map((image) => fromBytes(image.uint8Array)) };
    },
  };
}

// ------------------------------------------------------------------------------------------
// The OpenRouter AI SDK provider: chat images, read from the result's files

function openRouterCases() {
  const model = async () => {
    const { createOpenRouter } = await import("@openrouter/ai-sdk-provider");
    const openrouter = createOpenRouter({ baseURL: API_URL, apiKey: API_KEY });
    return openrouter.chat(MODEL, { extraBody: { modalities: ["image", "text"] } });
  };
  return {
    async chat() {
      const { generateText } = await import("ai");
      const result = await generateText({ model: await model(), prompt: PROMPT });
      return { images: result.files.map((file) => fromBytes(file.uint8Array)) };
    },
    async "chat-stream"() {
      const { streamText } = await import("ai");
      const result = streamText({ model: await model(), prompt: PROMPT });
      const images = [];
      for await (const part of result.fullStream) {
        if (part.type === "file") images.push(fromBytes(part.file.uint8Array));
        if (part.type === "error") throw part.error;
      }
      return { images };
    },
  };
}

// ------------------------------------------------------------------------------------------

const prefixed = (prefix, cases) =>
  Object.fromEntries(Object.entries(cases).map(([name, run]) => [`${prefix}:${name}`, run]));

const CASES = {
  ...prefixed("openai7", openaiCases("openai")),
  ...prefixed("openai6", openaiCases("openai-v6")),
  ...prefixed("ai7", aiSdkCases("ai", "@ai-sdk/openai")),
  ...prefixed("ai6", aiSdkCases("ai-v6", "@ai-sdk/openai-v3")),
  ...prefixed("compatible", compatibleCases()),
  ...prefixed("openrouter", openRouterCases()),
};

const name = process.argv[2];
if (!(name in CASES)) {
  console.error(`unknown case ${name}; known: ${Object.keys(CASES).join(", ")}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await CASES[name]()));
} catch (error) {
  console.error(error?.stack ?? String(error));
  if (error?.responseBody) console.error("response body:", error.responseBody);
  process.exit(1);
}
