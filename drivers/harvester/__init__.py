"""Cell harvester (Brandel / FilterMate 96-style) over RS-232: codec, driver, data types."""

from drivers.harvester.driver import (
    HarvesterDriver,
    HarvesterIdentity,
    HarvesterStatus,
    HarvestReport,
    MatReport,
)

__all__ = ["HarvestReport", "HarvesterDriver", "HarvesterIdentity", "HarvesterStatus",
           "MatReport"]
