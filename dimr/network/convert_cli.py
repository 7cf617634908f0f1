"""`python -m dimr convert FILE.pth --variant DiMR-XL/2R --out DIR`."""

from dimr.network.config import VARIANTS
from dimr.network.weights import convert, converted_dir


def add_cli_arguments(parser):
    parser.add_argument("checkpoint", help="official .pth file (a plain state dict)")
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="which released model it is")
    parser.add_argument("--out", help="output directory (default: the cache the app and sampler read)")


def cli_main(args):
    out = convert(args.checkpoint, args.variant, args.out or converted_dir(args.variant))
    print(f"wrote {out} (config.json + diffusion_pytorch_model.safetensors)")
