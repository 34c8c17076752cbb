"""Pure math on pilot reward matrices: the MAP dual, feasibility, sensitivity, palettes."""
