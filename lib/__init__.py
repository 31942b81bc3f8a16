"""The library: modules that are only imported, by the scripts at the top level and in tools/. The model, the
losses, the augmentations and the data set a run sees are the top level's (model.py, losses.py, augment.py,
data.py); the rest is here.

Data: layouts.py (finding image/mask pairs), images.py (reading files), decoding.py and mapped.py (the cache),
synthetic.py (fake data). Models: checkpoints.py (.pt files), onnx_model.py (.onnx files), model_files.py (the
released model's files and their checks), segmenter.py (one loaded model for prediction), scoring.py (PyTorch
inference and test numbers), masks.py and metrics.py (probabilities to masks, and their scores). Adaptation:
calibration.py, annotators.py, perturbations.py. Runs: run_folder.py, files.py (atomic writes), plots.py,
device.py, distributed.py. Every script: cli.py and errors.py.
"""
