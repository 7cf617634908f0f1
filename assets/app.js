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
