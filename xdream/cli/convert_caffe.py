"""`xdream convert-caffe`: an original DeePSiM caffemodel to a state dict."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    cv = sub.add_parser("convert-caffe", help="convert an original DeePSiM caffemodel to a state dict "
                                              "(no Caffe needed)")
    cv.add_argument("caffemodel", help="generator.caffemodel of the original release")
    cv.add_argument("--layer", required=True, help="which generator: norm1, norm2, conv3, conv4, pool5, "
                                                  "fc6, fc7 or fc8")
    cv.add_argument("--out", required=True, help="where to write the state dict (.pt)")
    cv.set_defaults(func=run)


def run(args) -> int:
    """Errors are GeneratorErrors, which main() prints (exit status 2)."""
    from server.generators.caffe import caffe_to_state_dict, save_state_dict

    state = caffe_to_state_dict(Path(args.caffemodel), args.layer)
    out = Path(args.out)
    sha = save_state_dict(state, out)
    n_values = sum(t.numel() for t in state.values())
    print(f"wrote {out}")
    print(f"{len(state)} tensors ({n_values:,} parameters) of the DeePSiM {args.layer} generator")
    print(f"sha256 {sha}")
    return 0
