"""Configuration of a hyperp transformer exported to the Hugging Face format."""

from transformers import PretrainedConfig


class HyperpConfig(PretrainedConfig):
    """The shape and multipliers of a hyperp decoder (dense or MoE).

    ``softmax_scale``, ``residual_multiplier`` and ``logit_multiplier`` are the values the model
    was trained with; the modeling file applies them exactly as hyperp does.
    """

    model_type = "hyperp"

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        num_key_value_heads: int = 4,
        head_dim: int = 32,
        intermediate_size: int = 512,
        max_position_embeddings: int = 256,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        qk_norm: bool = True,
        gated_attention: bool = True,
        softmax_scale: float | None = None,
        residual_multiplier: float = 1.0,
        logit_multiplier: float = 1.0,
        num_routed_experts: int = 0,
        num_experts_per_tok: int = 0,
        moe_intermediate_size: int = 0,
        shared_expert: bool = False,
        sqrt_gate: bool = True,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.qk_norm = qk_norm
        self.gated_attention = gated_attention
        self.softmax_scale = head_dim**-0.5 if softmax_scale is None else softmax_scale
        self.residual_multiplier = residual_multiplier
        self.logit_multiplier = logit_multiplier
        self.num_routed_experts = num_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.shared_expert = shared_expert
        self.sqrt_gate = sqrt_gate
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
