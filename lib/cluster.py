"""predict.py --cluster: the masks of a plain run, made by a Ray Data pipeline on a laptop or a cluster
(docs/scale.md). The driver lists the photos and names their outputs as a plain run does; actors, each holding one
ONNX Runtime session of the model (its seal checked as it loads), decode, segment and write batches of them, every
file whole (temporary file, then rename). An actor that dies is restarted and its batch retried: the retry writes
the same files again, so each photo still ends with one whole mask. Imported only with --cluster: ray is an extra
(requirements-cluster.txt, make cluster-setup)."""
import logging
import os
import socket

import numpy as np

from lib import cli, photos, saving
from lib.errors import Interrupted, UsageError
from lib.segmenter import Segmenter

RAY_MISSING = ("--cluster needs Ray Data, which the light install leaves out: `make cluster-setup` (or "
               "`.venv/bin/pip install -r requirements-cluster.txt`)")


class Segment:
    """A Ray Data actor: one loaded model; each batch of photos (columns path, name) decoded, segmented, written."""

    def __init__(self, checkpoint, threads, tta, options):
        self.segmenter = Segmenter.load(checkpoint, "cpu", threads=threads)
        self.tta, self.options = tta, options  # Segmenter.write's: largest_component, threshold, overlay

    def __call__(self, batch):
        model = self.segmenter
        decoded = [photos.decode(path, model.image_size) for path in batch["path"]]
        readable = [n for n, (photo, _) in enumerate(decoded) if photo is not None]
        probs = model.probabilities(np.stack([decoded[n][1] for n in readable]), self.tta) if readable else []
        scores, errors = [float("nan")] * len(decoded), [why for _, why in decoded]
        for n, prob in zip(readable, probs):
            model.write(prob, decoded[n][0], batch["name"][n], *self.options)
            scores[n] = model.unsure(prob, self.options[1])
            errors[n] = ""
        return {"path": batch["path"], "name": batch["name"], "unsure": scores, "error": errors}


def connect(address):
    """ray.init() for --cluster: "local" starts a cluster of this machine's cores for this run, "auto" joins the one
    `ray start` began here, anything else is a head's address (host:port or ray://host:port)."""
    # Ray's C++ log says, of every actor Ray Data starts, that a restart needs its constructor arguments (they stay
    # in the object store for the run); errors that matter reach the driver as Python exceptions
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address not in ("local", "auto") and not (host and port.isdigit()):
        raise UsageError(f"--cluster {address}: give local, auto or a Ray head's host:port")
    try:
        if address not in ("local", "auto"):  # Ray itself would retry an address where nothing listens for minutes
            socket.create_connection((host, int(port)), timeout=10).close()
        ray.init(**({"num_cpus": os.cpu_count()} if address == "local" else {"address": address}), **quiet)
    except (ConnectionError, ValueError, OSError) as e:
        raise UsageError(f"--cluster {address}: no Ray cluster answers there ({str(e).splitlines()[0]}); start one "
                         "with `ray start --head` (then --cluster auto on that machine, or its host:port), or use "
                         "--cluster local") from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours is the one bar
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no progress report every ten seconds
    return ray


def write_masks(checkpoint, todo, names, out, args, scores, options):
    """predict.py's write_masks on the cluster: (masks written, [unreadable: why]), each mask's unsure score added
    to `scores`; options: Segmenter.write's. Actors: the cluster's CPUs over --actor-cpus, each with that many ONNX
    Runtime threads."""
    ray = connect(args.cluster)
    actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // args.actor_cpus)
    rows = [{"path": str(p), "name": str(names[p])} for p in todo]
    written, failures = 0, []
    bar = cli.progress(len(rows), f"predicting on {cli.plural(actors, 'actor')}")
    try:
        if rows:  # blocks of a few batches each: enough of them to keep every actor busy, and to balance
            dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), max(
                4 * actors, len(rows) // (4 * args.batch_size))))
            # Ray Data's actors restart when their process dies, and a dead actor's batch is retried (its
            # defaults: max_restarts and max_task_retries -1); tests/test_cluster.py kills one
            actor_args = (checkpoint, args.actor_cpus, args.tta, options)
            results = dataset.map_batches(Segment, fn_constructor_args=actor_args, batch_size=args.batch_size,
                                          batch_format="numpy", num_cpus=args.actor_cpus,
                                          compute=ray.data.ActorPoolStrategy(size=actors))
            for row in results.iter_rows():
                if row["error"]:
                    failures.append(f"{row['path']}: {row['error']}")
                else:
                    written += 1
                    scores.add(row["name"], row["unsure"])
                bar.update(1)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {cli.plural(written, 'mask')} of {len(rows)} confirmed in {out}/ (others "
                          "may be written whole); run the same command with --skip-existing to continue") from None
    finally:
        bar.close()
        ray.shutdown()
    saving.remove_dead_temporaries(out)  # those of actors killed mid-write; their photos were written again
    return written, failures
