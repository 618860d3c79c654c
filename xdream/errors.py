"""One exception tree for the whole project.

    XdreamError
     +-- ConfigError          a config file or command-line value is wrong
     +-- ProtocolError        a message on the wire is malformed or unexpected
     +-- OptimizerError       ask/tell used out of order or with bad inputs
     +-- GeneratorError       a generator cannot be built or its weights loaded
     +-- SessionError         the session cannot go on (no peers, bad folder)
"""


class XdreamError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(XdreamError):
    pass


class ProtocolError(XdreamError):
    pass


class OptimizerError(XdreamError):
    pass


class GeneratorError(XdreamError):
    pass


class SessionError(XdreamError):
    pass
