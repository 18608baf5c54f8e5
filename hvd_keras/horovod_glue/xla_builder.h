// Forwarding header: XLA moved xla_builder.h to xla/hlo/builder/ (TensorFlow 2.19).
#include "xla/hlo/builder/xla_builder.h"
