"""The single error type for anything that breaks the contract."""


class ContractError(ValueError):
    """A message or topic that does not follow the contract.

    ``field`` names the offending field (dotted path) so logs and dead-letter rows say exactly
    what was wrong, e.g. ``image: decoded image is 5000000 bytes, limit 2097152``.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
