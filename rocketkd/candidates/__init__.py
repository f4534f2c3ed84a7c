"""Candidate lists: for each training query its positive and G-1 or more negatives, the data the teachers score and
training learns from.

* ``mining.py``: :func:`~rocketkd.candidates.mining.mine`, the driver (retrieve -> drop judged positives -> denoise
  -> augment -> pseudo-label -> write the lists with their provenance);
* ``retrieve.py``: first-stage retrieval and the re-ranker's logits, shared out across processes;
* ``negatives.py``: the pure steps (positives, false-negative denoising, sampled negatives, list assembly,
  teacher labelling, lists from labels alone);
* ``title_queries.py``: self-supervised queries from passage titles;
* ``lists.py``: :func:`~rocketkd.candidates.lists.build_lists`, the lists of a lone ``rocketkd train``.

The submodules are not imported here: ``title_queries`` is light, ``mining`` pulls in FAISS and the models.
"""
