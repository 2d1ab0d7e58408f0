"""Transformers, piece by piece: the code the chapters build and share.

Modules generated from the solution notebooks (edit the notebook, then `bash tasks.sh sync`):
machine (00), tokens (01), positions (02), attention (03).
Hand-written: checks (exercise checks), notebooks (course tooling), grade (instructor grading).
"""
