"""The training loop as a library: train.py and eval.py are thin command lines over it."""
