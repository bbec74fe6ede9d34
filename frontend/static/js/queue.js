// The blinded rater's queue: one patch at a time, answered by hotkey. Everything this page
// knows comes from the queue API, which names items only by opaque tokens.
import { urlFor } from "./lib/http.js";
import { QUEUE, actionFor } from "./lib/keys.js";
import { noFocusOnMouse, pageClient, pageConfig, showKeyHelp } from "./lib/page.js";
import { Taxonomy } from "./lib/taxonomy.js";

const config = pageConfig("queue-config");
const http = pageClient();
const taxonomy = new Taxonomy(config.taxonomy);
const $ = (id) => document.getElementById(id);

let item = null;
let shownAt = performance.now();
let busy = false;
let imageShown = false; // answers wait until this item's own patch is on the screen

$("patch").addEventListener("load", () => {
  $("patch").style.visibility = "visible";
  imageShown = true;
  shownAt = performance.now();
  document.body.dataset.imageShown = "true";
});
$("patch").addEventListener("error", () => setStatus("The image could not be loaded.", true));

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

// Leaves in the tree's order, each branch's classes under its heading.
function buildChoices() {
  let lastBranch = null;
  for (const leaf of taxonomy.leaves) {
    const branch = taxonomy.branchOf(leaf);
    if (branch.code !== lastBranch) {
      const heading = document.createElement("div");
      heading.className = "branch";
      heading.textContent = branch.name;
      $("choices").appendChild(heading);
      lastBranch = branch.code;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "choice";
    button.dataset.code = leaf.code;
    button.innerHTML = "<span></span><span class=key></span>";
    button.firstChild.textContent = `${leaf.name} (${leaf.code})`;
    button.lastChild.textContent = leaf.hotkey || "";
    button.addEventListener("click", () => answer({ node: leaf.code }));
    $("choices").appendChild(button);
  }
}

function show(next) {
  const newImage = !item || item.patch !== next.patch;
  item = next;
  if (newImage) {
    // Never show the previous cell's patch under the next cell's caption.
    imageShown = false;
    document.body.dataset.imageShown = "false";
    $("patch").style.visibility = "hidden";
    $("patch").src = item.patch;
  }
  $("position").textContent = `Cell ${item.position} of ${item.total}`;
  $("progress").max = item.total;
  $("progress").value = item.done;
  $("progress-text").textContent = `${item.done} / ${item.total} answered`;
  const given = item.answer;
  $("current-answer").textContent = given
    ? `Your answer: ${given.cannot_classify ? "cannot classify" : given.node}`
    : "";
  for (const button of document.querySelectorAll("button.choice")) {
    button.classList.toggle("chosen", Boolean(given && given.node === button.dataset.code));
  }
  $("finished").hidden = item.done < item.total;
  document.body.dataset.position = String(item.position);
}

async function open(position) {
  if (busy) return;
  busy = true;
  try {
    show(await http.get(urlFor(config.urls.item, { position })));
    setStatus("");
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    busy = false;
  }
}

async function answer(choice) {
  if (!item || busy) return;
  if (!imageShown) {
    setStatus("The image is still loading.");
    return;
  }
  busy = true;
  const seconds = (performance.now() - shownAt) / 1000;
  const body = { node: null, cannot_classify: false, seconds_spent: seconds, ...choice };
  setStatus("Saving…");
  try {
    const saved = await http.put(urlFor(config.urls.answer, { token: item.token }), body);
    setStatus("Saved.");
    busy = false;
    if (saved.next_unanswered && saved.next_unanswered !== saved.position) {
      await open(saved.next_unanswered);
    } else {
      show(saved);
    }
  } catch (error) {
    setStatus(`Not saved: ${error.message} Press the key again to retry.`, true);
  } finally {
    busy = false;
  }
}

function back() {
  if (item && item.position > 1) open(item.position - 1);
}

function forward() {
  if (item && item.position < item.total) open(item.position + 1);
}

function skip() {
  if (!item) return;
  const next = item.next_unanswered && item.next_unanswered !== item.position
    ? item.next_unanswered
    : (item.position % item.total) + 1;
  open(next);
}

// The keys mean what they mean on the annotation screen too (lib/keys.js).
const ACTIONS = {
  label: (meant) => answer({ node: meant.leaf.code }),
  cannot: () => answer({ cannot_classify: true }),
  previous: back,
  next: forward,
  "next-open": skip,
};

document.addEventListener("keydown", (event) => {
  const meant = actionFor(event, QUEUE, taxonomy);
  if (!meant) return;
  event.preventDefault();
  ACTIONS[meant.action](meant);
});
$("back").addEventListener("click", back);
$("skip").addEventListener("click", skip);
$("cannot").addEventListener("click", () => answer({ cannot_classify: true }));

buildChoices();
showKeyHelp($("key-help"), QUEUE);
noFocusOnMouse(document.querySelector(".choices"));
http.get(config.urls.round)
  .then((state) => open(state.first_unanswered || 1))
  .then(() => { document.body.dataset.ready = "true"; })
  .catch((error) => setStatus(error.message, true));
