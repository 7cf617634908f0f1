"""The demo's limits, in one place: the app's sliders and the request checks (dimr.demo.request) read them, and the
README states them (tests/test_readme.py checks that it does). A value out of range is refused with its name and
these bounds, in the API and on the page alike (the page never clamps a typed value).

One request holds the device for its whole run: these bound its time and the memory its branch panel keeps.
"""

MAX_IMAGES = 16  # per request
MAX_COMPARE_IMAGES = 40  # per model in Compare: the tiny models sample 4 images of each of the 10 shapes quickly
# A step runs the model once, or twice for Heun (dimr.sampling.pipeline.model_evaluations): the steps a request may
# ask for are bounded, and so are the model evaluations they cost.
MAX_STEPS = 250
MAX_EVALUATIONS = 250  # the official evaluation's 250 model evaluations
MAX_GUIDANCE = 10.0
MIN_GUIDANCE_POWER, MAX_GUIDANCE_POWER = 0.1, 4.0  # of the power-cosine guidance schedule
MAX_SEED = 2**32 - 1
