"""What the app serves: requests and their limits, the one sampling queue, the branch panel, the lab's verdicts.

May import: `dimr.network`, `dimr.sampling`, `dimr.lab` (and `dimr.atomic`, `dimr.checks`). The UI itself
(Gradio) lives in `app.py`; nothing here builds components.

- `catalogue`: the models on offer; `request`: one generation's controls, checked; `limits`: the largest values.
- `serving`: the device and the sampling thread; `batching`: requests that wait together sample together.
- `panel`: the branch panel's images; `png_files`: images as files, once per content; `refusals`: per-session messages.
- `shapes_lab`: real shapes, the judge's verdicts and stored rates, as the page shows them.
- `dit`, `imagenet_compare`: DiT-XL/2 beside DiMR-XL/2R from the same noise; `zero_gpu`: GPU time per request.
"""
