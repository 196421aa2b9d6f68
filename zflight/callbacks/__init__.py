"""Lightning callbacks: the VisualizationCallback base and one thin callback per analysis."""

from zflight.callbacks.base import AnalysisContext, Figure, Probe, VisualizationCallback, VizResult

__all__ = ["AnalysisContext", "Figure", "Probe", "VisualizationCallback", "VizResult"]
