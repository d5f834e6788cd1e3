//go:build tools

// The module of this folder exists only to build the weed command: this import keeps it.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
