"""What make adapt chooses among, and how it chooses, on the user's own labelled images (tools/adapt.py): each
candidate is scored out of fold (k-fold cross-validation: every image scored by a candidate fitted on the other
folds), and a fine-tuned candidate is shipped only when it beats the edge move alone there by more than its paired
standard error; else the edge move (when calibration adopts one) or the model before. Synthetic shifts chose the
candidates; the user's images judge them."""
from lib.compare import paired_difference

# The candidates, in the order a tie keeps: the model before; its edge moved (make calibrate); fine-tuned on the
# labels as they are, an edge move calibrated on top if it clears; fine-tuned on the labels with the edge move
# undone, the move applied after (the recipe synthetic annotators chose on 2026-12-03)
CANDIDATES = {"before": "the model before", "edge": "the edge move alone",
              "tuned": "fine-tuned on your masks as they are", "tuned-moved": "fine-tuned on your masks with the "
              "edge move undone, the move applied after"}
FINE_TUNED = ("tuned", "tuned-moved")


def choose(scores, edge_move):
    """(the candidate to ship, {candidate: paired_difference() against the edge move alone}) from out-of-fold
    per-image IoU {candidate: [N]}: the fine-tuned candidate with the best mean among those whose gain over the
    edge move alone clears its standard error, else "edge" when calibration on all images adopts a move
    (edge_move != 0), else "before"."""
    reference = scores["edge"]
    against = {name: paired_difference(reference, s) for name, s in scores.items()}
    clear = [name for name in FINE_TUNED if name in scores and against[name]["n"] > 1
             and against[name]["difference"] > against[name]["standard_error"]]
    if clear:
        return max(clear, key=lambda name: against[name]["new"]), against
    return ("edge" if edge_move else "before"), against
