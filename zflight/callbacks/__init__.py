"""Lightning callbacks: the VisualizationCallback base and one thin callback per analysis."""

from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Figure, Probe, VizResult

__all__ = ["AnalysisContext", "Figure", "Probe", "VisualizationCallback", "VizResult"]
