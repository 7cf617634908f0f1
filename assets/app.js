// A number typed into a slider's box stays as typed. Gradio clamps it into the slider's range when the box loses
// focus, so the page would sample another value than the one asked for, without a word; kept, it reaches the
// server's checks, which refuse it in the status line with its name and the allowed range (dimr.demo.limits).
// Loaded in the page's head, before the app, so that no value is typed before it listens.
window.addEventListener("blur", (event) => {
  const box = event.target;
  const slider = box instanceof HTMLInputElement && box.type === "number" &&
    box.closest(".wrap")?.querySelector("input[type=range]");
  if (slider) event.stopImmediatePropagation();
}, true);

// The branch panel's player. Play shows the panel after each step in turn, from frames the server sends once per run
// and view, on the first Play (app.py `film`: one small image per step, captioned with its step, in a hidden
// gallery); nothing is sampled or drawn on the server while it plays. When it stops (Pause, or the last step) the step slider moves there, as if
// moved by hand, and the panel shows that step.
const player = { timer: null, frames: [], index: 0 };
const FRAME_MS = 300;
const PLAY = "▶ Play", PAUSE = "Pause";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function filmShown() {
  return [...document.querySelectorAll("#panel-film .thumbnail-item")].map((item) => ({
    src: item.querySelector("img")?.src, step: Number(item.textContent.trim()),
  })).filter((frame) => frame.src && frame.step);
}

async function film() {
  let frames = filmShown();
  if (!frames.length) {  // not here yet for this run and view: Play's own event asks the server for it
    for (let tries = 0; tries < 600 && !frames.length; tries++) {
      await sleep(100);
      frames = filmShown();
    }
  }
  await Promise.all(frames.map((frame) => {
    frame.image = new Image();
    frame.image.src = frame.src;
    return frame.image.decode().catch(() => {});
  }));
  return frames;
}

function showFrame(frame) {
  document.querySelector("#panel-player img").src = frame.src;
  document.querySelector("#panel-player .player-step").textContent = `after step ${frame.step}`;
  for (const box of document.querySelectorAll("#panel-step input")) box.value = frame.step;
}

async function stop(settle = true) {
  clearInterval(player.timer);
  player.timer = null;
  const button = document.querySelector("#panel-play");
  if (button) button.textContent = PLAY;
  const frame = player.frames[player.index];
  const range = document.querySelector("#panel-step input[type=range]");
  if (settle && frame && range) {  // the slider's own event: the panel shows the step, the note names it
    range.value = frame.step;
    range.dispatchEvent(new Event("input", { bubbles: true }));
    const note = document.querySelector("#panel-note");
    for (let tries = 0; tries < 50 && !note?.textContent.includes(`after step ${frame.step} `); tries++) await sleep(100);
  }
  document.body.classList.remove("panel-playing");
}

async function play(button) {
  button.textContent = PAUSE;
  player.timer = -1;  // pressed: a second press pauses even while the film loads
  const frames = await film();
  if (player.timer !== -1 || !frames.length) return stop(false);
  if (!document.querySelector("#panel-player")) {  // under the panel's label, in place of its images
    document.querySelector("#branch-panel [data-testid=block-label]").insertAdjacentHTML("afterend",
      '<div id="panel-player"><div class="player-step"></div><img alt="the branch panel, playing"></div>');
  }
  const now = Number(document.querySelector("#panel-step input[type=number]").value);
  const at = frames.findIndex((frame) => frame.step >= now);
  player.frames = frames;
  player.index = at < 0 || at === frames.length - 1 ? 0 : at;  // from the start when at the last step
  showFrame(frames[player.index]);
  document.body.classList.add("panel-playing");
  player.timer = setInterval(() => {
    if (player.index + 1 >= player.frames.length) return stop();
    showFrame(player.frames[++player.index]);
  }, FRAME_MS);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("#panel-play");
  if (button) return player.timer ? stop() : play(button);
  if (event.target.closest("#generate-button") && player.timer) stop(false);  // a new run: its own panel
});
