"""Copy-detection methods of both ISC2021 tracks.

* :mod:`.spec`: what a method is (:class:`MethodSpec`, its track, :class:`CandidateSource`) and the
  :data:`METHODS` registry (``list_methods("sscd*", track="descriptor")``, ``get_method("sift_verify")``);
* :mod:`.post`: the descriptor track's post-processing (:data:`POST`, :func:`prepare`,
  :class:`Prepared`) and :func:`prepared_predictions`, where vectors become scored pairs;
* :mod:`.postprocess`: the pure functions behind it (PCA, score normalisation, DBA + NES, stretching,
  S-square's query shift);
* :mod:`.matchers`: the matching track's extension point (:data:`MATCHERS`, :class:`Matcher`,
  :class:`CandidatePairs`, :class:`MatchContext`, :class:`MatchResult`);
* :mod:`.catalog`: the registered methods.

The runner (:mod:`imsim_lab.runner`) executes a method of either track into a run folder.
"""

from .matchers import MATCHERS, CandidatePairs, Matcher, MatchContext, MatchResult, create_matcher
from .post import POST, Prepared, prepare, prepared_predictions
from .spec import METHODS, TRACKS, CandidateSource, MethodSpec, get_method, list_methods
from . import catalog  # noqa: F401  (registers the methods)
from . import sift  # noqa: F401  (registers the "sift" matcher)
from . import pairvit  # noqa: F401  (registers the "pairvit" matcher and method)
from . import imgfp  # noqa: F401  (registers the imgFp matchers and methods)
from . import lv  # noqa: F401  (registers the "lv" matcher and the methods sscd+lv, d2lv)

__all__ = ["MATCHERS", "METHODS", "POST", "TRACKS", "CandidatePairs", "CandidateSource", "MatchContext",
           "MatchResult", "Matcher", "MethodSpec", "Prepared", "create_matcher", "get_method", "list_methods",
           "prepare", "prepared_predictions"]
