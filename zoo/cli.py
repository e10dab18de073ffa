"""The ``zoo`` command. Each subcommand is a thin wrapper over importable functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys


DEBUG_ENV = "ZOO_DEBUG"  # ZOO_DEBUG=1: errors raise with their traceback instead of one line


def _one_line(e: BaseException, limit: int = 400) -> str:
    """An error as the user sees it: its message's first lines, joined, cut at ``limit``.
    ``OSError``s name their file (``[Errno 13] Permission denied: 'x'``)."""
    text = " ".join(line.strip() for line in str(e).splitlines()[:3] if line.strip())
    text = text or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _from_orbax(tb) -> bool:
    while tb is not None:
        if "/orbax/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quiet_unraisable(unraisable, _default=sys.unraisablehook) -> None:
    """Drops what orbax's tensorstore reads leave behind when they fail on a damaged checkpoint
    (after zoo has reported it in one line): "Event loop is closed", and the read errors of the
    array reads it abandoned. Shows anything else."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return
    if _from_orbax(unraisable.exc_traceback):
        return
    _default(unraisable)


class _QuietAbandonedReads(logging.Filter):
    """asyncio's "exception was never retrieved": zoo runs no asyncio of its own, so these are
    the reads of a damaged checkpoint that orbax gave up on, after zoo has said which checkpoint
    it could not read."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


class _QuietOrbaxErrors(logging.Filter):
    """orbax's errors, each logged with its traceback from the thread that met it (a failed save
    logs the same write error four times). A failed save or restore also raises, and zoo reports
    that in one line (which checkpoint, why, which one is still whole). ``ZOO_DEBUG=1`` shows
    them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and f"{os.sep}orbax{os.sep}" in record.pathname)


# Subcommands import what they run when they run: `zoo --help` and `zoo bench` (which sets up
# devices before JAX starts) stay fast.

def _process_log():
    """``print`` on process 0, silence on the others (one progress line, not one per process)."""
    import jax
    return print if jax.process_index() == 0 else (lambda *a, **k: None)


def _train(args, overrides) -> int:
    from zoo import config as config_lib
    from zoo import sample, train
    from zoo.core import distributed

    config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
    distributed.check_agreement(config.to_json())
    log = _process_log()
    if args.workdir is None:
        log("zoo train: no --workdir: checkpoints, metrics and samples will not be saved",
            file=sys.stderr)
    train.train(config, args.workdir, log=log, make_sampler=sample.run_sampler)
    return 0


def _eval(args, overrides) -> int:
    from zoo import config as config_lib
    from zoo import eval_quality

    config = None
    if args.config:
        config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
        overrides = []
    eval_quality.evaluate_checkpoint(args.path, config=config, overrides=overrides,
                                     step=args.step, split=args.split,
                                     quality=not args.no_quality, num_samples=args.num_samples,
                                     iwae_k=args.iwae_k,
                                     sampling_steps=_numbers(args.sampling_steps, int,
                                                             "--sampling-steps"),
                                     guidances=_numbers(args.guidance, float, "--guidance"),
                                     classifier=args.classifier, log=_process_log())
    return 0


def _numbers(text: str | None, kind, option: str) -> list:
    """A comma-separated list of numbers (``10,20,50``); a bad one is named."""
    if not text:
        return []
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated {kind.__name__} values "
                         f"(e.g. 10,20,50); got {text!r}") from None


def _export(args, overrides) -> int:
    from zoo import checkpoint

    if args.format not in checkpoint.EXPORT_FORMATS:  # before reading the run
        raise ValueError(f"unknown export format {args.format!r}; choose one of "
                         f"{', '.join(checkpoint.EXPORT_FORMATS)}")
    out = checkpoint.export_params(checkpoint.load_run(args.path, args.step), args.out,
                                   player=args.player, fmt=args.format)
    print(f"wrote {out}")
    return 0


def _list(args, overrides) -> int:
    from pathlib import Path

    from zoo import models

    print("model families:")
    for name in sorted(models.FAMILIES):
        print(f"  {name}")
    # --configs, else ./configs, else the configs/ of the checkout zoo runs from.
    looked = [Path(args.configs)] if args.configs else [
        Path("configs"), Path(__file__).resolve().parents[1] / "configs"]
    configs = next((d for d in looked if d.is_dir()), None)
    if configs is None:
        print("configs: none found (looked in " + ", ".join(map(str, looked)) + "; pass "
              "--configs DIR)")
        return 0
    print(f"configs ({configs}):")
    for path in sorted(configs.glob("*.py")):
        if path.stem == "default":  # the defaults every config starts from, not a run
            continue
        text = path.read_text()
        doc = text.split('"""')[1].strip().splitlines()[0] if '"""' in text else ""
        print(f"  {path.stem:<28} {doc}")
    return 0


def _sample(args, overrides) -> int:
    from zoo import sample

    written = sample.sample_main(args.path, args.out, seed=args.seed, dataset=args.dataset,
                                 tfds_data_dir=args.tfds_data_dir, download_dir=args.download_dir,
                                 sampler=args.sampler, sampling_steps=args.sampling_steps,
                                 eta=args.eta, guidance=args.guidance)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _inpaint(args, overrides) -> int:
    from zoo import inpaint

    written = inpaint.inpaint_main(
        args.path, args.out, sampling_steps=args.sampling_steps, guidance=args.guidance,
        dataset=args.dataset, tfds_data_dir=args.tfds_data_dir, download_dir=args.download_dir,
        **_given(mask=args.mask, num_images=args.images, seed=args.seed, resample=args.resample))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _generate(args, overrides) -> int:
    from zoo import generate

    texts = generate.generate_main(args.path, args.prompt, **_given(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed))
    for prompt, text in zip(args.prompt, texts):
        print(prompt + text + ("\n" if len(texts) > 1 else ""))
    return 0


def _prepare_text(args, overrides) -> int:
    from zoo import config as config_lib
    from zoo import text_data

    if (args.text is None) == (args.dataset is None):
        raise ValueError("give one of --text FILE or --dataset NAME")
    config_lib.make_folder(args.out, "--out")  # before the text is read and encoded
    data = {"dataset": args.dataset or "synthetic", "tokenizer": args.tokenizer or "",
            "tokenizer_path": args.tokenizer_path or "", "path": args.path or "",
            "source": args.source}
    meta = text_data.prepare_token_files(args.out, text_file=args.text,
                                         val_fraction=args.val_fraction, data_config=data)
    counts = ", ".join(f"{split} {n:,}" for split, n in meta["tokens"].items())
    print(f"wrote {args.out}: {counts} tokens ({meta['dtype']}, {meta['tokenizer']['name']} "
          f"vocabulary of {meta['vocab_size']:,})")
    print(f"train on it with --config.data.dataset=tokens --config.data.path={args.out}")
    return 0


def _given(**options) -> dict:
    """The options the command line set: the rest are not passed, so the called function's own
    defaults hold (their one home)."""
    return {k: v for k, v in options.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    from zoo import config as config_lib
    from zoo.core import distributed  # argparse only: JAX does not start here

    parser = config_lib.ArgumentParser(prog="zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a config file",
                       description="zoo train --config configs/NAME.py --workdir DIR "
                                   "[--config.key=value ...]")
    p.add_argument("--config", required=True, help="a config file in configs/")
    p.add_argument("--workdir", default=None, help="where metrics and checkpoints go")
    distributed.add_arguments(p)
    p.set_defaults(run=_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint: metrics and sample quality",
                       description="zoo eval RUN_DIR [--step N] [--split test] [--iwae-k K] "
                                   "[--config FILE --config.key=value]. Prints the eval metrics "
                                   "and, for generative models, the quality report (FID, "
                                   "precision/recall, mode coverage; perplexity, distinct-n; "
                                   "generation speed), and writes them to RUN_DIR/eval.json.")
    p.add_argument("path", help="a run directory (the --workdir of zoo train)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    p.add_argument("--no-quality", action="store_true", help="eval metrics only, no samples")
    p.add_argument("--num-samples", type=int, default=10_000,
                   help="images generated for the image-quality report (default 10000)")
    p.add_argument("--iwae-k", type=int, default=0,
                   help="VAE: also the IWAE-k test log-likelihood (e.g. 5000; slow)")
    p.add_argument("--sampling-steps", default=None,
                   help="diffusion: DDIM step counts to compare, e.g. 10,20,50,100 (quality and "
                        "samples/s for each; plotted to RUN_DIR/eval_sampling.png)")
    p.add_argument("--guidance", default=None,
                   help="conditional diffusion: guidance scales to compare, e.g. 0,1,3")
    p.add_argument("--classifier", default=None, metavar="CLASSIFIER_RUN",
                   help="a zoo classifier run trained on the run's dataset, whose features judge "
                        "the images (default: the one zoo ships for the run's dataset, "
                        "zoo.models.classifier.SHIPPED)")
    distributed.add_arguments(p)
    p.add_argument("--config", default=None, help="a config file to use instead of the saved one "
                                                  "(--config.key=value overrides apply either way)")
    p.set_defaults(run=_eval)
    p = sub.add_parser("sample", help="write sample PNGs from a run directory or checkpoint",
                       description="zoo sample RUN --out DIR: a sample grid (a row per class for "
                                   "conditional models), an interpolation strip, and what the "
                                   "family adds (reconstructions, a 2-d latent's maps; a "
                                   "diffusion model's denoising strip, drawn with --sampler, "
                                   "--sampling-steps, --eta, --guidance)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default=None)
    p.add_argument("--tfds-data-dir", default=None)
    p.add_argument("--download-dir", default=None)
    p.add_argument("--sampler", default=None, help="diffusion: ddim (default) or ddpm (all T "
                                                   "steps, ancestral)")
    p.add_argument("--sampling-steps", type=int, default=None,
                   help="diffusion: DDIM steps (default: the model config's)")
    p.add_argument("--eta", type=float, default=None,
                   help="diffusion: DDIM eta, 0 (deterministic, default) to 1")
    p.add_argument("--guidance", type=float, default=None,
                   help="conditional diffusion: guidance scale w (0: unconditional, 1: "
                        "conditional; default: the model config's)")
    p.set_defaults(run=_sample)
    p = sub.add_parser("inpaint", help="fill masked test images with a diffusion model",
                       description="zoo inpaint RUN --out DIR [--mask center|left|top|random] "
                                   "[--images N]: writes inpainting.png (rows original, "
                                   "masked, filled) and inpainting.npz (the three arrays and "
                                   "the mask)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    # Unset --mask, --images, --resample and --seed take zoo.inpaint.inpaint_main's defaults.
    p.add_argument("--mask", help="the region to fill: center, left, top or random")
    p.add_argument("--images", type=int, help="how many test images")
    p.add_argument("--sampling-steps", type=int, default=None,
                   help="DDIM steps (default: the model config's)")
    p.add_argument("--resample", type=int, help="RePaint resamplings per step (1: none)")
    p.add_argument("--guidance", type=float, default=None,
                   help="conditional models: guidance toward each image's label (0: unconditional)")
    p.add_argument("--seed", type=int)
    p.add_argument("--dataset", default=None)
    p.add_argument("--tfds-data-dir", default=None)
    p.add_argument("--download-dir", default=None)
    p.set_defaults(run=_inpaint)
    p = sub.add_parser("generate", help="generate text from a zoo language-model run or a "
                                        "Hugging Face GPT-2 folder",
                       description="zoo generate PATH --prompt TEXT: PATH is a zoo train workdir "
                                   "of an lstm or transformer run, or a GPT-2 folder "
                                   "(config.json, model.safetensors, vocab.json, merges.txt)")
    p.add_argument("path")
    p.add_argument("--prompt", required=True, action="append",
                   help="a prompt; repeat for a batch of prompts")
    # Unset options take zoo.generate.generate_main's defaults.
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0: greedy")
    p.add_argument("--top-k", type=int, help="0: off")
    p.add_argument("--top-p", type=float, help="1: off")
    p.add_argument("--seed", type=int)
    p.set_defaults(run=_generate)
    p = sub.add_parser("export", help="write a trained run's params to a file or a Hugging "
                                      "Face GPT-2 folder",
                       description="zoo export RUN --format msgpack --out FILE [--player NAME]: "
                                   "one player's params (float32, flax msgpack), e.g. the "
                                   "classifier zoo's image-quality metrics use. zoo export RUN "
                                   "--format hf-gpt2 --out DIR: a transformer run as a folder "
                                   "transformers' GPT2LMHeadModel and GPT2Tokenizer load "
                                   "(safetensors; LoRA adapters merged)")
    p.add_argument("path", help="a run directory (the --workdir of zoo train) or a checkpoint")
    p.add_argument("--format", default="msgpack", help="msgpack (default) or hf-gpt2")
    p.add_argument("--out", required=True, help="a file (msgpack) or a folder (hf-gpt2)")
    p.add_argument("--player", default=None, help="whose params (default: the only player)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.set_defaults(run=_export)
    p = sub.add_parser("prepare-text", help="tokenize a text into memory-mapped token files",
                       description="zoo prepare-text (--text FILE | --dataset NAME) --out DIR "
                                   "[--tokenizer char|word|gpt2 --tokenizer-path DIR]: writes "
                                   "train.bin, val.bin (nanoGPT's layout) and meta.json, which "
                                   "data.dataset=tokens with data.path=DIR trains on without "
                                   "loading them whole")
    p.add_argument("--text", default=None, help="a UTF-8 text file (split by --val-fraction)")
    p.add_argument("--dataset", default=None, help="a text dataset: tiny_shakespeare, ptb, ptb_char")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--tokenizer", default=None,
                   help="char, word or gpt2 (default: the dataset's usual one; char for --text)")
    p.add_argument("--tokenizer-path", default=None, help="gpt2: folder of vocab.json, merges.txt")
    p.add_argument("--path", default=None, help="the dataset's folder (default: ../shared/data)")
    p.add_argument("--source", default="raw", help="tiny_shakespeare: raw or tfds")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="--text: the last part that validates (default 0.1, as nanoGPT)")
    p.set_defaults(run=_prepare_text)
    p = sub.add_parser("bench", help="benchmark harness (zoo bench --help)", add_help=False)
    p.set_defaults(run=None)
    p = sub.add_parser("list", help="list model families and configs")
    p.add_argument("--configs", default=None,
                   help="the folder of config files (default: ./configs, else the checkout's)")
    p.set_defaults(run=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from zoo.core import host_memory, xla_flags
    xla_flags.apply_cpu_defaults()  # before anything starts JAX's backend
    host_memory.keep_freed_memory()  # before the first large allocation
    if os.environ.get(DEBUG_ENV, "") in ("", "0"):
        sys.unraisablehook = _quiet_unraisable
        logging.getLogger("asyncio").addFilter(_QuietAbandonedReads())
        logging.getLogger("absl").addFilter(_QuietOrbaxErrors())
    if argv and argv[0] == "bench":  # its own parser; must run before JAX starts a backend
        from zoo.bench import bench_main
        return bench_main(argv[1:])
    args, rest = build_parser().parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if overrides and args.command not in ("train", "eval"):  # they would be dropped silently
        unknown += overrides
    if unknown:
        print(f"zoo {args.command}: unrecognised arguments {' '.join(unknown)}", file=sys.stderr)
        return 2
    from zoo.core import distributed  # already imported by build_parser
    try:
        if args.command in ("train", "eval"):  # before anything touches a device
            distributed.join(distributed.cluster_from(args))
            code = args.run(args, overrides)
            distributed.mark_finished()
            return code
        return args.run(args, overrides)
    except Exception as e:  # noqa: BLE001 -- one line for the user; the traceback on request
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"zoo {args.command}: error: {_one_line(e)}", file=sys.stderr)
        if not isinstance(e, (ValueError, OSError, FloatingPointError)):
            print(f"zoo {args.command}: (an internal error: {type(e).__name__}; run with "
                  f"{DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        code = 2 if isinstance(e, ValueError) else 1
        if args.command in ("train", "eval"):
            distributed.leave_after_error(code)
        return code
    except KeyboardInterrupt:  # outside training (which saves and returns on SIGINT)
        print(f"zoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
