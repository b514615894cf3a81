"""The formation-enthalpy pipeline of the DLHub paper: composition -> Magpie features -> random forest."""
