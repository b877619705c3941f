"""Plans: the JSON contract between planning, preprocessing, training and inference."""
from nnreg.planning.plans import ConfigurationPlan, Plans

__all__ = ["ConfigurationPlan", "Plans"]
