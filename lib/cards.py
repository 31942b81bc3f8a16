"""The card of a calibrated or adapted model (tools/calibrate.py, tools/adapt.py): its first sentence says which
model to use next and the command for it, then where the model came from, its edge move and how it scored on the
held-out images, with what a standard error means there. Torch-free: make calibrate writes it on the light
install."""
import datetime
from pathlib import Path

from lib import model_files, revision, saving
from lib.calibration import CANDIDATES

MARGIN = 2  # standard errors a paired change must clear before the card calls it better or worse
FEW_HELD_OUT = 10  # below this many held-out images the card warns that its scores say little


def verdict(rows, adapted):
    """Sentences on the last row against the first: better or worse only when the paired change clears MARGIN
    standard errors, else no clear difference; a warning below FEW_HELD_OUT held-out images."""
    last = rows[list(rows)[-1]]
    what, n, change, error = ("adaptation" if adapted else "calibration"), last["n"], \
        last["difference"], last["standard_error"]
    if n < 2:
        text = (f"On 1 held-out image {what} changed IoU by {change:+.4f}: one image gives no standard error, so "
                "this says nothing either way.")
    elif change > MARGIN * error:
        text = (f"On {n} held-out images {what} helped: IoU {change:+.4f} ± {error:.4f} (more than {MARGIN} "
                "standard errors).")
    elif change < -MARGIN * error:
        text = (f"On {n} held-out images {what} did worse: IoU {change:+.4f} ± {error:.4f} (more than {MARGIN} "
                "standard errors); keep the model before, or label more images.")
    else:
        text = (f"On {n} held-out images {what} made no clear difference (IoU {change:+.4f} ± {error:.4f}, within "
                f"{MARGIN} standard errors).")
    if n < FEW_HELD_OUT:
        text += (f" Only {n} held-out image{'s' if n > 1 else ''}: too few to tell a change of a few hundredths; hold "
                 f"out {FEW_HELD_OUT} or more: label {FEW_HELD_OUT - n} more and put them in test/images + "
                 f"test/masks (a plain images/ + masks/ folder holds a fifth out: label {5 * (FEW_HELD_OUT - n)} "
                 "more there).")
    return text


def standard_error(row):
    return "n/a (1 image)" if row["n"] < 2 else f"{row['standard_error']:.4f}"


def edge_words(move):
    """An edge move in words: 'the model's own edge', or 'the edge moved in by 7% of each lesion's radius'."""
    if not move:
        return "the model's own edge"
    return f"the edge moved {'in' if move > 0 else 'out'} by {abs(move):.0%} of each lesion's radius"


def calibration_sentence(c, adapted):
    """What calibration (calibration.calibrate: the best move if its gain clears its standard error) found, and the
    edge move it uses, in plain words."""
    found = f"Calibration {'of the model before ' if adapted else ''}on those {c['images']} images found"
    if c["best_edge_move"] == c.get("neutral", 0):
        return f"{found} the model's own edge best, so it is kept."
    found += (f" its masks fit yours best with {edge_words(c['best_edge_move'])} (a move of "
              f"{c['best_edge_move']:+g}): IoU {c['gain']:+.4f} over the model's own edge on them, ± "
              f"{c['standard_error']:.4f}; ")
    if c["edge_move"] == c.get("neutral", 0):
        return found + "that is within its standard error, so the model's own edge is kept."
    return found + "that clears its standard error, so it is used."


def predict_command(model):
    """The make command that segments photos with this model (the released one needs no CHECKPOINT)."""
    given = "" if Path(model).resolve() in (model_files.PT.resolve(), model_files.ONNX.resolve()) else \
        f" CHECKPOINT={model}"
    return f"`make predict INPUT=photos/{given}`"


def recommendation(report, rows):
    """The card's first sentence: which model to use next, the command for it, and why in plain words. A new model
    is used when the rule that made it (cross-validation, or calibration's) found it better and the held-out
    images, if any, do not clearly say otherwise; without cross-validation, only when the held-out images clearly
    say it is better."""
    what, new, before = ("adapted" if report["adapted"] else "calibrated"), report["model"], report["checkpoint"]
    keep = f"**Keep the model before, `{before}`:** {predict_command(before)}."
    use = f"**Use the {what} model, `{new}`:** {predict_command(new)} (in the browser: `make serve CHECKPOINT={new}`)."
    cv, last = report.get("cross_validation"), rows[list(rows)[-1]] if rows else None
    clear = last and last["n"] >= 2 and last["difference"] > MARGIN * last["standard_error"]
    held = f"On {last['n']} held-out image{'s' if last['n'] > 1 else ''} " if last else ""
    neutral = report.get("calibration", {}).get("neutral", 0)  # the move the model given made already
    if report.get("choice") == "before" or not report["adapted"] and report["edge_move"] == neutral:
        why = (f"No candidate beat it clearly in cross-validation on your {cv['images']} images" if cv else
               "Calibration kept the model's own edge")
        return f"{keep} {why}, so `{new}` draws the same masks."
    if last and last["n"] >= 2 and last["difference"] < -MARGIN * last["standard_error"]:
        return f"{keep} {held}the {what} model `{new}` did worse (IoU {last['difference']:+.4f})."
    if clear:
        return f"{use} {held}its masks matched yours better than the model before's (IoU {last['difference']:+.4f})."
    if cv:
        gain = cv["against_before"][report["choice"]]
        return (f"{use} In cross-validation on your {cv['images']} images it was the best choice: "
                f"{CANDIDATES[report['choice']]}, IoU {gain['difference']:+.4f} over the model before."
                + (f" {held}it was not clearly better or worse (IoU {last['difference']:+.4f})." if last else ""))
    if not rows:
        return (f"{keep} No labelled image was held out, so nothing here shows that the {what} model `{new}` is "
                f"better; put {FEW_HELD_OUT} or more labelled images in test/images + test/masks and run again.")
    return (f"{keep} {held}the {what} model `{new}` was not clearly better (IoU {last['difference']:+.4f}), so it "
            "is not worth the change.")


def validation_lines(cv):
    """The card's table of the cross-validated candidates and the sentence on the choice."""
    lines = [f"**Chosen by {cv['folds']}-fold cross-validation on your {cv['images']} training images** (each image "
             "scored by the candidates fitted on the other folds):", "",
             "| candidate | mean IoU | change vs the model before | change vs the edge move alone |",
             "|---|---|---|---|"]
    for name, row in cv["against_before"].items():
        edge = cv["against_edge"][name]
        lines.append(f"| {CANDIDATES[name]} | {row['new']:.4f} | {row['difference']:+.4f} | "
                     f"{edge['difference']:+.4f} ± {standard_error(edge)} |")
    return lines + ["", "The better fine-tuned model is chosen unless it trails the edge move alone here by more than "
                    f"twice the standard error (±); chosen: **{CANDIDATES[cv['choice']]}**.", ""]


def fine_tuning_sentence(report):
    """How the shipped model was fine-tuned, if it was, and the edge move its masks then take."""
    if not report["adapted"]:
        return ""
    if report.get("choice") == "tuned":
        return (" The model was then fine-tuned on these images' masks as they are; calibrating its edge on them "
                f"afterwards gave {edge_words(report['edge_move'])}.")
    return (" The model was then fine-tuned on these images with their masks' edge moved back by that move, so that"
            " it learns what the move does not." if report["edge_move"] else "")


def card(report, rows):
    """The adapted model's card (Markdown): which model to use next, where it came from, its edge move, and how
    it scores."""
    c = report["calibration"]
    lines = [f"# {'Adapted' if report['adapted'] else 'Calibrated'} lesion segmenter", "",
             recommendation(report, rows), "",
             f"`{Path(report['model']).name}`, written by {report['tool']} on {report['date']} (commit "
             f"{report['commit']}) from "
             f"`{report['adapted'] or report['checkpoint']}`"
             + (f", fine-tuned from `{report['checkpoint']}`" if report['adapted'] else "")
             + f" on {c['images']} labelled images of `{report['data_dir']}`.", "",
             f"**Masks: {edge_words(report['edge_move'])}.** "
             + calibration_sentence(c, report["adapted"])
             + fine_tuning_sentence(report), ""]
    if report.get("cross_validation"):
        lines += validation_lines(report["cross_validation"])
    if rows:
        lines += [f"IoU on {report['held_out']} held-out images (each mask's own size, flip TTA, largest region):", "",
                  "| model | mean IoU | change | ± (standard error) | better / worse images |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {r['new']:.4f} | {r['difference']:+.4f} | {standard_error(r)} | "
                  f"{r['new_better']} / {r['new_worse']} |" for name, r in rows.items()]
        lines += ["", verdict(rows, report["adapted"]) + " (± is the standard error of the mean change over "
                  "these images: a change smaller than about twice it may be chance.)"]
    else:
        lines += ["No held-out images (the folder has a training split only, or too few images to hold a fifth "
                  "out): put some in test/images + test/masks to see whether this model is better than the one "
                  "before."]
    if report["recipe"]:
        flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in report["recipe"].items()
                 if v is not False]
        lines += ["", f"Fine-tuned with train.py {' '.join(flags)} (all flags: its config.json)."]
    return "\n".join(lines) + "\n"


def write(out, report, rows, name):
    """The report, dated and with the code's commit, as out/name and its card as out/README.md (written through
    files: a full disk is one sentence); the card's body printed."""
    report.update(date=datetime.date.today().isoformat(), commit=revision.code_revision())
    saving.write_json(out / name, report)
    text = card(report, rows)
    saving.write_text(out / "README.md", text)
    print(text.split("\n", 2)[2].rstrip())
