// All attention blocks of attnkit and the factory that builds them by name.
#pragma once

// Sequence attention: [batch, length, dim]
#include <attnkit/modules/additive_attention.h>
#include <attnkit/modules/functional.h>
#include <attnkit/modules/multihead_attention.h>

// Feature-map attention and CNN gates: [N, C, H, W] -> same shape
#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/local_attention2d.h>
#include <attnkit/modules/self_attention2d.h>
#include <attnkit/modules/spatial_attention.h>
#include <attnkit/modules/squeeze_excite.h>

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/factory.h>
#include <attnkit/modules/gate.h>
#include <attnkit/modules/implementation.h>

// Fused kernels, also reachable as torch.ops.attnkit.*
#include <attnkit/modules/ops/cbam.h>
#include <attnkit/modules/ops/relpos_attention.h>
