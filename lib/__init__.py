"""The library: modules that are only imported, by the scripts at the top level and in tools/. The model, the
losses, the augmentations and the data set a run sees are the top level's (model.py, losses.py, augment.py,
data.py); the rest is here, and takes what a student edits (a loss, an augmentation) as an argument, resolved once
by the script.

Data: layouts.py (finding image/mask pairs), readers.py (reading image and mask files), splits.py (which images a
run holds out), decoding.py and mapped.py (the cache), synthetic.py (fake data).
Models: checkpoints.py (.pt files), onnx_model.py (.onnx files), model_files.py (a model file's seal, the released
files), segmenter.py (one loaded model for prediction), scoring.py (PyTorch inference and test numbers), masks.py
(probabilities to masks, the unsure score), metrics.py and compare.py (scores, with and without torch).
Your photos: photos.py (inputs, output names, writing masks), watching.py (a folder that keeps receiving photos),
cluster.py (predict.py --cluster: Ray Data actors).
Adaptation: calibration.py (the edge move, and make adapt's choice among candidates), cards.py (their
cards), annotators.py and perturbations.py (synthetic annotators and camera shifts).
Runs: run_folder.py (a run's folder, checkpoints, resuming, its log), features.py (a frozen encoder's features,
computed once), saving.py (files written whole), revision.py (the commit that wrote a file), plots.py, device.py,
distributed.py (torchrun), timing.py (the benchmarks' clock). Every script: cli.py and errors.py.
"""
