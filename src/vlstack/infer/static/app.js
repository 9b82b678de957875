"use strict";
// The chat page: keeps the conversation, posts it to /v1/chat/completions with
// stream: true, and renders the server-sent events as they arrive.

const MAX_SIDE = 1024; // larger images are downscaled here: the model sees far fewer pixels anyway
const $ = (id) => document.getElementById(id);
const chat = { model: undefined, messages: [], image: null, controller: null };

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return;
  }
  chat.model = (await response.json()).data[0].id;
  $("model-name").textContent = chat.model;
  setStatus("");
}

// --- the image ------------------------------------------------------------------------

function readImage(file) {
  return new Promise((resolve, reject) => {
    if (!file.type.startsWith("image/")) {
      reject(new Error(`${file.name} is not an image`));
      return;
    }
    const reader = new FileReader();
    reader.onerror = () => reject(reader.error);
    reader.onload = () => {
      const image = new Image();
      image.onerror = () => reject(new Error(`${file.name} could not be decoded`));
      image.onload = () => {
        const scale = MAX_SIDE / Math.max(image.naturalWidth, image.naturalHeight);
        if (scale >= 1) {
          resolve(reader.result);
          return;
        }
        const canvas = document.createElement("canvas");
        canvas.width = Math.round(image.naturalWidth * scale);
        canvas.height = Math.round(image.naturalHeight * scale);
        canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
        resolve(canvas.toDataURL("image/jpeg", 0.9));
      };
      image.src = reader.result;
    };
    reader.readAsDataURL(file);
  });
}

async function attach(file) {
  try {
    chat.image = await readImage(file);
    $("preview").src = chat.image;
    $("attachment").hidden = false;
    setStatus("");
    $("question").focus();
  } catch (error) {
    setStatus(error.message, true);
  }
}

function detach() {
  chat.image = null;
  $("attachment").hidden = true;
  $("preview").removeAttribute("src");
  $("image-input").value = "";
}

// --- the conversation -------------------------------------------------------------------

function addMessage(role, text, image) {
  $("empty")?.remove();
  const item = document.createElement("article");
  item.className = `message ${role}`;
  if (image) {
    const picture = document.createElement("img");
    picture.src = image;
    picture.alt = "the attached image";
    item.append(picture);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  $("log").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

// Yields each event's parsed data until `data: [DONE]`.
async function* serverSentEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = blocks.pop();
    for (const block of blocks) {
      const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function requestBody(message) {
  const body = { model: chat.model, messages: [...chat.messages, message], stream: true };
  const settings = [["temperature", "temperature", parseFloat], ["max-tokens", "max_tokens", parseInt],
                    ["seed", "seed", parseInt]];
  for (const [id, field, parse] of settings) {
    if ($(id).value !== "") body[field] = parse($(id).value);
  }
  return body;
}

async function send(event) {
  event.preventDefault();
  if (chat.controller) {
    chat.controller.abort();
    return;
  }
  const question = $("question").value.trim();
  if (!question) return;
  const content = chat.image ? [{ type: "image_url", image_url: { url: chat.image } }] : [];
  content.push({ type: "text", text: question });
  const message = { role: "user", content };
  addMessage("user", question, chat.image);
  const answer = addMessage("assistant", "");
  const answerText = answer.querySelector(".text");
  answer.dataset.state = "streaming";
  $("question").value = "";
  detach();
  setBusy(new AbortController());
  let text = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody(message)),
      signal: chat.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of serverSentEvents(response.body)) {
      if (data.error) throw new Error(data.error.message);
      const piece = data.choices[0]?.delta?.content;
      if (piece) {
        text += piece;
        answerText.textContent = text;
        answer.scrollIntoView({ block: "end" });
      }
    }
    chat.messages.push(message, { role: "assistant", content: text });
    answer.dataset.state = "done";
  } catch (error) {
    if (error.name === "AbortError") {
      chat.messages.push(message, { role: "assistant", content: text });
      answer.dataset.state = "stopped";
    } else {
      answerText.textContent = error.message;
      answer.dataset.state = "error";
    }
  } finally {
    setBusy(null);
  }
}

function setBusy(controller) {
  chat.controller = controller;
  $("send").textContent = controller ? "Stop" : "Send";
  $("send").classList.toggle("stop", Boolean(controller));
}

function newChat() {
  chat.controller?.abort();
  chat.messages = [];
  detach();
  $("log").replaceChildren();
  setStatus("");
}

// --- wiring -----------------------------------------------------------------------------

$("composer").addEventListener("submit", send);
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("question").addEventListener("input", () => {
  $("question").style.height = "auto";
  $("question").style.height = `${$("question").scrollHeight}px`;
});
$("image-input").addEventListener("change", () => {
  if ($("image-input").files[0]) attach($("image-input").files[0]);
});
$("remove-image").addEventListener("click", detach);
$("new-chat").addEventListener("click", newChat);
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("vlstack-api-key", $("api-key").value);
  loadModel();
});
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) attach(file);
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files[0]) attach(event.dataTransfer.files[0]);
});

$("api-key").value = sessionStorage.getItem("vlstack-api-key") || "";
loadModel();
