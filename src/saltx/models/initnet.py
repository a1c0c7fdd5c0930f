"""Per-input embedding networks (Salt's ``InitNet``)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from saltx.models.dense import Dense, attach_context


def init_net_input_size(
    input_name: str,
    variables: Mapping[str, list[str]],
    global_object: str = "jets",
    attach_global: bool = True,
) -> int:
    """Number of features an init net sees (Salt §2.3).

    ``len(variables[input_name])``, plus the global object's and the PARAMETERS' counts
    when ``attach_global`` (never for ``EDGE``).
    """
    if input_name not in variables:
        raise KeyError(
            f"init net for {input_name!r}: data.variables has no {input_name!r} entry "
            f"(it has {list(variables)})"
        )
    size = len(variables[input_name])
    if attach_global and input_name != "EDGE":
        size += len(variables[global_object]) + len(variables.get("PARAMETERS", []))
    return size


class InitNet(nn.Module):
    """Embed one input type: ``Dense([PARAMETERS..., global vars..., own vars...]) -> output``.

    Parameters
    ----------
    input_name
        The input it embeds (``tracks``, ``electrons``, ``EDGE``, or the global object for a
        jets-only model).
    variables
        ``data.variables``; sets the input size.
    output_size
        Embedding width (the model's ``embed_dim``, or the edge embedding width).
    global_object
        Name of the global object whose (normalised) features are attached.
    attach_global
        Prepend the global object's features and the PARAMETERS to every constituent.
    hidden_layers, hidden_dim_scale, activation, final_activation, norm_layer, dropout, muP
        Passed to :class:`~saltx.models.dense.Dense`.
    """

    def __init__(
        self,
        input_name: str,
        variables: Mapping[str, list[str]],
        output_size: int,
        global_object: str = "jets",
        attach_global: bool = True,
        hidden_layers: list[int] | None = None,
        hidden_dim_scale: int = 2,
        activation: str = "ReLU",
        final_activation: str | None = None,
        norm_layer: str | None = None,
        dropout: float = 0.0,
        muP: bool = False,
    ) -> None:
        super().__init__()
        self.input_name = input_name
        self.global_object = global_object
        self.attach_global = bool(attach_global) and input_name != "EDGE"
        if self.attach_global and input_name == global_object:
            raise ValueError(
                f"init net for the global object {global_object!r} must use attach_global: false"
            )
        self.attach_parameters = self.attach_global and "PARAMETERS" in variables
        self.input_size = init_net_input_size(input_name, variables, global_object, attach_global)
        self.net = Dense(
            input_size=self.input_size,
            output_size=output_size,
            hidden_layers=hidden_layers,
            hidden_dim_scale=hidden_dim_scale,
            activation=activation,
            final_activation=final_activation,
            norm_layer=norm_layer,
            dropout=dropout,
            muP=muP,
        )
        self.output_size = int(output_size)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Embed ``inputs[input_name]``.

        Parameters
        ----------
        inputs
            Normalised inputs: the own input ``(B, N, F)`` (``(B, N, N, E)`` for EDGE,
            ``(B, F)`` for the global object), ``inputs[global_object]`` ``(B, G)`` and
            ``inputs["PARAMETERS"]`` ``(B, P)`` when attached.

        Returns
        -------
        Tensor
            ``(..., output_size)``.
        """
        x = inputs[self.input_name]
        if self.attach_global:
            x = attach_context(x, inputs[self.global_object])
        if self.attach_parameters:
            x = attach_context(x, inputs["PARAMETERS"])
        return self.net(x)
