package service_test

import "testing"

func backends(t *testing.T) []backend {
	return []backend{jetstreamBackend()}
}
