#include "daxshim.h"
