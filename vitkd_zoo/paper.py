"""Facts about arXiv 2511.15572 quoted by cards, docs and tables (one place, so they never drift apart)."""

ARXIV_ID = "2511.15572"
PAPER_ID = f"arXiv:{ARXIV_ID}"
TITLE = "From Per-Image Low-Rank to Encoding Mismatch: Rethinking Feature Distillation in Vision Transformers"
AUTHORS_CODE = "https://github.com/thy960112/From-Per-Image-Low-Rank-to-Encoding-Mismatch"
AUTHORS_WEIGHTS = "Huiyuancs/Encoding_Mismatch"

# Only the surnames are published in what we could read (PMLR v306 key tian26k); no first names are invented here.
CITATION_BIBTEX = """@inproceedings{tian26k,
  title         = {From Per-Image Low-Rank to Encoding Mismatch: Rethinking Feature Distillation in Vision Transformers},
  author        = {Tian and Xu and Li},
  booktitle     = {Proceedings of the 43rd International Conference on Machine Learning (ICML)},
  series        = {Proceedings of Machine Learning Research},
  volume        = {306},
  year          = {2026},
  eprint        = {2511.15572},
  archivePrefix = {arXiv},
  note          = {OpenReview 2Ud1nkQrVZ}
}"""
